//! Lexer and parser for the Go `text/template` language as consul-template (and so Nomad's
//! `template` block) uses it: text, actions between configurable delimiters, `{{-`/`-}}`
//! whitespace trimming, `{{/* comments */}}`, pipelines, variables, parenthesised pipelines,
//! `if`/`else if`/`else`/`with`/`range`/`break`/`continue`/`end`.
//!
//! Functions are resolved at parse time, as Go does: an unknown one is an error naming it and
//! where it is used.

use super::exec::Value;
use super::funcs;

/// An error at a byte offset of the template text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{msg}")]
pub struct SyntaxError {
    pub pos: usize,
    pub msg: String,
}

fn err<T>(pos: usize, msg: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError {
        pos,
        msg: msg.into(),
    })
}

/// How deeply actions, parentheses and blocks may nest (keeps recursion bounded).
const MAX_DEPTH: usize = 100;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Text(String),
    Left,
    Right,
    Ident(String),
    /// `.A.B` (a chain of one or more field names).
    Fields(Vec<String>),
    /// `.` alone.
    Dot,
    /// `$name` or `$`, with any `.field` chain right after it.
    Var(String, Vec<String>),
    Const(Value),
    LParen,
    /// `)`, and any `.field` chain right after it.
    RParen(Vec<String>),
    Pipe,
    Comma,
    Declare,
    Assign,
    Kw(Kw),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kw {
    If,
    Else,
    End,
    Range,
    With,
    Break,
    Continue,
    Define,
    Template,
    Block,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: usize,
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

struct Lexer<'a> {
    src: &'a str,
    left: &'a str,
    right: &'a str,
    pos: usize,
    out: Vec<Token>,
    trim_next_text: bool,
}

/// Splits `src` into tokens.
fn lex(src: &str, left: &str, right: &str) -> Result<Vec<Token>, SyntaxError> {
    if left.is_empty() || right.is_empty() {
        return err(0, "template delimiters must not be empty");
    }
    let mut l = Lexer {
        src,
        left,
        right,
        pos: 0,
        out: Vec::new(),
        trim_next_text: false,
    };
    l.run()?;
    Ok(l.out)
}

impl Lexer<'_> {
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn push(&mut self, tok: Tok, pos: usize) {
        self.out.push(Token { tok, pos });
    }

    fn run(&mut self) -> Result<(), SyntaxError> {
        loop {
            let Some(found) = self.rest().find(self.left) else {
                let text = self.take_text(self.src.len(), false);
                if !text.is_empty() {
                    let pos = self.pos;
                    self.push(Tok::Text(text), pos);
                }
                return Ok(());
            };
            let start = self.pos + found;
            let after = start + self.left.len();
            let trim_left = {
                let mut it = self.src[after..].chars();
                it.next() == Some('-') && it.next().is_some_and(is_space)
            };
            let text_pos = self.pos;
            let text = self.take_text(start, trim_left);
            if !text.is_empty() {
                self.push(Tok::Text(text), text_pos);
            }
            self.pos = if trim_left { after + 2 } else { after };
            // A comment is the whole action and starts right after the delimiter (and marker).
            if self.rest().starts_with("/*") {
                self.comment(start)?;
                continue;
            }
            self.push(Tok::Left, start);
            self.inside_action(start)?;
        }
    }

    /// Text from the current position to `end`, trimmed as the markers around it ask.
    fn take_text(&mut self, end: usize, trim_right: bool) -> String {
        let mut text = &self.src[self.pos..end];
        if self.trim_next_text {
            text = text.trim_start_matches(is_space);
            self.trim_next_text = false;
        }
        if trim_right {
            text = text.trim_end_matches(is_space);
        }
        self.pos = end;
        text.to_owned()
    }

    fn comment(&mut self, action_start: usize) -> Result<(), SyntaxError> {
        let Some(end) = self.rest().find("*/") else {
            return err(action_start, "unclosed comment");
        };
        self.pos += end + 2;
        if let Some(trim) = self.at_right_delim() {
            self.finish_right(trim);
            Ok(())
        } else {
            err(action_start, "comment ends before closing delimiter")
        }
    }

    /// Whether the right delimiter comes next; `Some(true)` with a ` -` trim marker.
    fn at_right_delim(&self) -> Option<bool> {
        let rest = self.rest();
        let mut it = rest.chars();
        if let (Some(c), Some('-')) = (it.next(), it.next())
            && is_space(c)
            && rest[c.len_utf8() + 1..].starts_with(self.right)
        {
            return Some(true);
        }
        rest.starts_with(self.right).then_some(false)
    }

    fn finish_right(&mut self, trim: bool) {
        if trim {
            let c = self.rest().chars().next().map_or(0, char::len_utf8);
            self.pos += c + 1;
        }
        self.pos += self.right.len();
        self.trim_next_text = trim;
    }

    fn inside_action(&mut self, action_start: usize) -> Result<(), SyntaxError> {
        let mut depth = 0usize;
        loop {
            if let Some(trim) = self.at_right_delim() {
                if depth > 0 {
                    return err(self.pos, "unclosed left paren");
                }
                let pos = self.pos;
                self.finish_right(trim);
                self.push(Tok::Right, pos);
                return Ok(());
            }
            let Some(c) = self.rest().chars().next() else {
                return err(action_start, "unclosed action");
            };
            let pos = self.pos;
            match c {
                c if is_space(c) => self.pos += 1,
                '|' => {
                    self.pos += 1;
                    self.push(Tok::Pipe, pos);
                }
                ',' => {
                    self.pos += 1;
                    self.push(Tok::Comma, pos);
                }
                '(' => {
                    self.pos += 1;
                    depth += 1;
                    self.push(Tok::LParen, pos);
                }
                ')' => {
                    if depth == 0 {
                        return err(pos, "unexpected right paren");
                    }
                    depth -= 1;
                    self.pos += 1;
                    let chain = self.field_chain()?;
                    self.push(Tok::RParen(chain), pos);
                }
                ':' => {
                    if self.rest().starts_with(":=") {
                        self.pos += 2;
                        self.push(Tok::Declare, pos);
                    } else {
                        return err(pos, "expected :=");
                    }
                }
                '=' => {
                    self.pos += 1;
                    self.push(Tok::Assign, pos);
                }
                '"' => {
                    let s = self.quoted()?;
                    self.push(Tok::Const(Value::Str(s)), pos);
                }
                '`' => {
                    let body = &self.rest()[1..];
                    let Some(end) = body.find('`') else {
                        return err(pos, "unterminated raw quoted string");
                    };
                    let s = body[..end].to_owned();
                    self.pos += end + 2;
                    self.push(Tok::Const(Value::Str(s)), pos);
                }
                '\'' => {
                    let v = self.char_constant()?;
                    self.push(Tok::Const(Value::Int(v)), pos);
                }
                '$' => {
                    self.pos += 1;
                    let name = self.ident();
                    let chain = self.field_chain()?;
                    self.push(Tok::Var(format!("${name}"), chain), pos);
                }
                '.' => {
                    let next = self.rest()[1..].chars().next();
                    if next.is_some_and(|n| n.is_ascii_digit()) {
                        let v = self.number()?;
                        self.push(Tok::Const(v), pos);
                    } else if next.is_some_and(is_ident_start) {
                        let chain = self.field_chain()?;
                        self.push(Tok::Fields(chain), pos);
                    } else {
                        self.pos += 1;
                        self.push(Tok::Dot, pos);
                    }
                }
                '+' | '-' | '0'..='9' => {
                    let v = self.number()?;
                    self.push(Tok::Const(v), pos);
                }
                c if is_ident_start(c) => {
                    let word = self.ident();
                    let tok = match word.as_str() {
                        "if" => Tok::Kw(Kw::If),
                        "else" => Tok::Kw(Kw::Else),
                        "end" => Tok::Kw(Kw::End),
                        "range" => Tok::Kw(Kw::Range),
                        "with" => Tok::Kw(Kw::With),
                        "break" => Tok::Kw(Kw::Break),
                        "continue" => Tok::Kw(Kw::Continue),
                        "define" => Tok::Kw(Kw::Define),
                        "template" => Tok::Kw(Kw::Template),
                        "block" => Tok::Kw(Kw::Block),
                        "true" => Tok::Const(Value::Bool(true)),
                        "false" => Tok::Const(Value::Bool(false)),
                        "nil" => Tok::Const(Value::Nil),
                        _ => Tok::Ident(word),
                    };
                    self.push(tok, pos);
                }
                other => {
                    return err(
                        pos,
                        format!(
                            "unrecognized character in action: U+{:04X} {other:?}",
                            u32::from(other)
                        ),
                    );
                }
            }
        }
    }

    fn ident(&mut self) -> String {
        let rest = self.rest();
        let len = rest
            .char_indices()
            .find(|(_, c)| !is_ident_char(*c))
            .map_or(rest.len(), |(i, _)| i);
        let word = rest[..len].to_owned();
        self.pos += len;
        word
    }

    /// `.a.b.c` right at the current position (possibly none).
    fn field_chain(&mut self) -> Result<Vec<String>, SyntaxError> {
        let mut chain = Vec::new();
        while self.rest().starts_with('.') {
            let pos = self.pos;
            self.pos += 1;
            let name = self.ident();
            if name.is_empty() {
                return err(pos, "bad character after '.' in field name");
            }
            chain.push(name);
        }
        Ok(chain)
    }

    fn quoted(&mut self) -> Result<String, SyntaxError> {
        let start = self.pos;
        let mut out = String::new();
        let mut chars = self.src[start + 1..].char_indices();
        loop {
            let Some((i, c)) = chars.next() else {
                return err(start, "unterminated quoted string");
            };
            match c {
                '"' => {
                    self.pos = start + 1 + i + 1;
                    return Ok(out);
                }
                '\n' => return err(start, "unterminated quoted string"),
                '\\' => {
                    let Some((_, e)) = chars.next() else {
                        return err(start, "unterminated quoted string");
                    };
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'a' => out.push('\u{7}'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'v' => out.push('\u{b}'),
                        '\\' => out.push('\\'),
                        '"' => out.push('"'),
                        '\'' => out.push('\''),
                        'x' | 'u' | 'U' => {
                            let n = match e {
                                'x' => 2,
                                'u' => 4,
                                _ => 8,
                            };
                            let mut code = 0u32;
                            for _ in 0..n {
                                let d = chars.next().and_then(|(_, d)| d.to_digit(16)).ok_or_else(
                                    || SyntaxError {
                                        pos: start,
                                        msg: "invalid escape in quoted string".into(),
                                    },
                                )?;
                                code = code * 16 + d;
                            }
                            out.push(char::from_u32(code).ok_or_else(|| SyntaxError {
                                pos: start,
                                msg: "invalid escape in quoted string".into(),
                            })?);
                        }
                        other => {
                            return err(
                                start,
                                format!("unknown escape sequence \\{other} in quoted string"),
                            );
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn char_constant(&mut self) -> Result<i64, SyntaxError> {
        let start = self.pos;
        let body = &self.src[start + 1..];
        let mut chars = body.chars();
        let (c, len) = match chars.next() {
            Some('\\') => match chars.next() {
                Some('n') => ('\n', 2),
                Some('t') => ('\t', 2),
                Some('\\') => ('\\', 2),
                Some('\'') => ('\'', 2),
                Some('r') => ('\r', 2),
                _ => return err(start, "unsupported escape in character constant"),
            },
            Some(c) if c != '\'' && c != '\n' => (c, c.len_utf8()),
            _ => return err(start, "malformed character constant"),
        };
        if !body[len..].starts_with('\'') {
            return err(start, "unterminated character constant");
        }
        self.pos = start + 1 + len + 1;
        Ok(i64::from(u32::from(c)))
    }

    fn number(&mut self) -> Result<Value, SyntaxError> {
        let start = self.pos;
        let rest = self.rest();
        let mut end = 0;
        let mut prev = '\0';
        for (i, c) in rest.char_indices() {
            let ok = c.is_ascii_alphanumeric()
                || c == '_'
                || c == '.'
                || (i == 0 && (c == '+' || c == '-'))
                || ((c == '+' || c == '-') && matches!(prev, 'e' | 'E' | 'p' | 'P'));
            if !ok {
                break;
            }
            end = i + c.len_utf8();
            prev = c;
        }
        let text = rest[..end].to_owned();
        self.pos += end;
        parse_number(&text).ok_or_else(|| SyntaxError {
            pos: start,
            msg: format!("bad number syntax: {text:?}"),
        })
    }
}

fn parse_number(text: &str) -> Option<Value> {
    let clean: String = text.chars().filter(|c| *c != '_').collect();
    let (neg, digits) = match clean.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean)),
    };
    if digits.is_empty() {
        return None;
    }
    let radix = |p: &str, r: u32| {
        digits
            .strip_prefix(p)
            .or_else(|| digits.strip_prefix(&p.to_uppercase()))
            .and_then(|d| i64::from_str_radix(d, r).ok())
    };
    let int = radix("0x", 16)
        .or_else(|| radix("0o", 8))
        .or_else(|| radix("0b", 2))
        .or_else(|| {
            if digits.len() > 1
                && digits.starts_with('0')
                && digits.bytes().all(|b| b.is_ascii_digit())
            {
                i64::from_str_radix(&digits[1..], 8).ok()
            } else {
                digits.parse::<i64>().ok()
            }
        });
    if let Some(i) = int {
        return Some(Value::Int(if neg { -i } else { i }));
    }
    if digits.starts_with("0x") || digits.starts_with("0X") {
        return None;
    }
    let f: f64 = digits.parse().ok()?;
    f.is_finite()
        .then_some(Value::Float(if neg { -f } else { f }))
}

// ---------------------------------------------------------------------------------------------
// The tree.

/// One node of a parsed template.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Text(String),
    /// `{{ pipeline }}`: prints its value unless it declares or assigns a variable.
    Action(Pipe),
    If(Box<Control>),
    With(Box<Control>),
    Range(Box<Control>),
    Break(usize),
    Continue(usize),
}

/// The parts of an `if`, `with` or `range`.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    pub pipe: Pipe,
    pub list: Vec<Node>,
    pub else_list: Vec<Node>,
}

/// `$x := cmd | cmd …`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipe {
    pub pos: usize,
    pub decl: Vec<String>,
    /// `=` rather than `:=`.
    pub assign: bool,
    pub cmds: Vec<Cmd>,
}

/// One command of a pipeline: a function and its arguments, or a single operand.
#[derive(Debug, Clone, PartialEq)]
pub struct Cmd {
    pub pos: usize,
    pub args: Vec<Arg>,
}

/// An operand.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Func(String, usize),
    Dot(usize),
    Fields(Vec<String>, usize),
    Var(String, Vec<String>, usize),
    Const(Value, usize),
    Pipe(Box<Pipe>, Vec<String>, usize),
}

impl Arg {
    pub fn pos(&self) -> usize {
        match self {
            Arg::Func(_, p)
            | Arg::Dot(p)
            | Arg::Fields(_, p)
            | Arg::Var(_, _, p)
            | Arg::Const(_, p)
            | Arg::Pipe(_, _, p) => *p,
        }
    }
}

/// Parses a template.
pub fn parse(src: &str, left: &str, right: &str) -> Result<Vec<Node>, SyntaxError> {
    let tokens = lex(src, left, right)?;
    let mut p = Parser {
        tokens,
        i: 0,
        vars: vec!["$".to_owned()],
        depth: 0,
        range_depth: 0,
        eof: src.len(),
    };
    let (nodes, end) = p.list()?;
    match end {
        Closer::Eof => Ok(nodes),
        Closer::End(pos) => err(pos, "unexpected {{end}}"),
        Closer::Else(pos) | Closer::ElseControl(pos, _) => err(pos, "unexpected {{else}}"),
    }
}

enum Closer {
    Eof,
    End(usize),
    Else(usize),
    /// `{{else if …}}` / `{{else with …}}`; the keyword is left for the caller.
    ElseControl(usize, Kw),
}

struct Parser {
    tokens: Vec<Token>,
    i: usize,
    vars: Vec<String>,
    depth: usize,
    range_depth: usize,
    eof: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.i)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.i).cloned();
        self.i += 1;
        t
    }

    fn next_pos(&self) -> usize {
        self.peek().map_or(self.eof, |t| t.pos)
    }

    fn expect_right(&mut self, what: &str) -> Result<(), SyntaxError> {
        match self.next() {
            Some(Token {
                tok: Tok::Right, ..
            }) => Ok(()),
            Some(t) => err(t.pos, format!("unexpected {} in {what}", describe(&t.tok))),
            None => err(self.eof, format!("unclosed {what}")),
        }
    }

    fn enter(&mut self, pos: usize) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(pos, "template nests too deeply");
        }
        Ok(())
    }

    fn list(&mut self) -> Result<(Vec<Node>, Closer), SyntaxError> {
        let mut nodes = Vec::new();
        loop {
            let Some(t) = self.next() else {
                return Ok((nodes, Closer::Eof));
            };
            match t.tok {
                Tok::Text(s) => nodes.push(Node::Text(s)),
                Tok::Left => {
                    let Some(kw) = self.peek().cloned() else {
                        return err(t.pos, "unclosed action");
                    };
                    match kw.tok {
                        Tok::Kw(Kw::End) => {
                            self.i += 1;
                            self.expect_right("end")?;
                            return Ok((nodes, Closer::End(t.pos)));
                        }
                        Tok::Kw(Kw::Else) => {
                            self.i += 1;
                            match self.peek().map(|t| t.tok.clone()) {
                                Some(Tok::Kw(k @ (Kw::If | Kw::With))) => {
                                    return Ok((nodes, Closer::ElseControl(t.pos, k)));
                                }
                                _ => {
                                    self.expect_right("else")?;
                                    return Ok((nodes, Closer::Else(t.pos)));
                                }
                            }
                        }
                        Tok::Kw(k @ (Kw::If | Kw::With | Kw::Range)) => {
                            self.i += 1;
                            nodes.push(self.control(k, t.pos)?);
                        }
                        Tok::Kw(k @ (Kw::Break | Kw::Continue)) => {
                            self.i += 1;
                            if self.range_depth == 0 {
                                let name = if k == Kw::Break { "break" } else { "continue" };
                                return err(t.pos, format!("{{{{{name}}}}} outside {{{{range}}}}"));
                            }
                            self.expect_right(if k == Kw::Break { "break" } else { "continue" })?;
                            nodes.push(if k == Kw::Break {
                                Node::Break(t.pos)
                            } else {
                                Node::Continue(t.pos)
                            });
                        }
                        Tok::Kw(k @ (Kw::Define | Kw::Template | Kw::Block)) => {
                            let name = match k {
                                Kw::Define => "define",
                                Kw::Template => "template",
                                _ => "block",
                            };
                            return err(
                                kw.pos,
                                format!("{{{{{name}}}}} is not supported in Caravan templates"),
                            );
                        }
                        _ => {
                            let pipe = self.pipeline(true, false, t.pos)?;
                            self.expect_right("command")?;
                            nodes.push(Node::Action(pipe));
                        }
                    }
                }
                other => return err(t.pos, format!("unexpected {}", describe(&other))),
            }
        }
    }

    /// `if`, `with` or `range` after its keyword, through its `{{end}}`.
    fn control(&mut self, kind: Kw, pos: usize) -> Result<Node, SyntaxError> {
        self.enter(pos)?;
        let mark = self.vars.len();
        let name = match kind {
            Kw::If => "if",
            Kw::With => "with",
            _ => "range",
        };
        let pipe = self.pipeline(true, kind == Kw::Range, pos)?;
        self.expect_right(name)?;
        if kind == Kw::Range {
            self.range_depth += 1;
        }
        let body = self.list();
        if kind == Kw::Range {
            self.range_depth -= 1;
        }
        let (list, end) = body?;
        let else_list = match end {
            Closer::End(_) => Vec::new(),
            Closer::Eof => {
                return err(
                    pos,
                    format!("unexpected EOF: {{{{{name}}}}} has no {{{{end}}}}"),
                );
            }
            Closer::Else(_) => {
                let (else_list, end) = self.list()?;
                match end {
                    Closer::End(_) => else_list,
                    Closer::Eof => {
                        return err(
                            pos,
                            format!("unexpected EOF: {{{{{name}}}}} has no {{{{end}}}}"),
                        );
                    }
                    Closer::Else(p) | Closer::ElseControl(p, _) => {
                        return err(
                            p,
                            format!(
                                "expected {{{{end}}}}; found a second {{{{else}}}} in {{{{{name}}}}}"
                            ),
                        );
                    }
                }
            }
            Closer::ElseControl(p, k) => {
                if k != kind {
                    return err(
                        p,
                        format!(
                            "{{{{else {}}}}} is not allowed in {{{{{name}}}}}",
                            if k == Kw::If { "if" } else { "with" }
                        ),
                    );
                }
                // `{{else if b}}…{{end}}` is `{{else}}{{if b}}…{{end}}{{end}}`.
                let kw_pos = self.next_pos();
                self.i += 1;
                vec![self.control(k, kw_pos)?]
            }
        };
        self.vars.truncate(mark);
        self.depth -= 1;
        let c = Box::new(Control {
            pipe,
            list,
            else_list,
        });
        Ok(match kind {
            Kw::If => Node::If(c),
            Kw::With => Node::With(c),
            _ => Node::Range(c),
        })
    }

    /// A pipeline, up to (not including) `}}` or, inside parentheses, `)`.
    fn pipeline(&mut self, allow_decl: bool, range: bool, pos: usize) -> Result<Pipe, SyntaxError> {
        let mut pipe = Pipe {
            pos: self.next_pos(),
            decl: Vec::new(),
            assign: false,
            cmds: Vec::new(),
        };
        if allow_decl {
            self.declarations(&mut pipe, range)?;
        }
        loop {
            let cmd = self.command()?;
            pipe.cmds.push(cmd);
            match self.peek().map(|t| &t.tok) {
                Some(Tok::Pipe) => {
                    self.i += 1;
                }
                _ => break,
            }
        }
        if pipe.cmds.is_empty() {
            return err(pos, "missing value for command");
        }
        // Declared variables are visible after the pipeline.
        if !pipe.assign {
            self.vars.extend(pipe.decl.iter().cloned());
        }
        Ok(pipe)
    }

    fn declarations(&mut self, pipe: &mut Pipe, range: bool) -> Result<(), SyntaxError> {
        let save = self.i;
        let mut names = Vec::new();
        while let Some(Token {
            tok: Tok::Var(name, chain),
            pos,
        }) = self.peek().cloned()
        {
            if !chain.is_empty() {
                break;
            }
            self.i += 1;
            match self.peek().map(|t| t.tok.clone()) {
                Some(Tok::Declare) | Some(Tok::Assign) if names.len() < 2 => {
                    let assign = matches!(self.peek().map(|t| &t.tok), Some(Tok::Assign));
                    self.i += 1;
                    names.push((name, pos));
                    if assign {
                        if names.len() > 1 {
                            return err(pos, "too many declarations in command");
                        }
                        if !self.vars.contains(&names[0].0) {
                            return err(pos, format!("undefined variable {:?}", names[0].0));
                        }
                        pipe.assign = true;
                    }
                    pipe.decl = names.into_iter().map(|(n, _)| n).collect();
                    return Ok(());
                }
                Some(Tok::Comma) if range && names.is_empty() => {
                    self.i += 1;
                    names.push((name, pos));
                }
                _ => break,
            }
        }
        if names.is_empty() {
            self.i = save;
            return Ok(());
        }
        err(self.next_pos(), "expected := after range variables")
    }

    fn command(&mut self) -> Result<Cmd, SyntaxError> {
        let pos = self.next_pos();
        let mut cmd = Cmd {
            pos,
            args: Vec::new(),
        };
        loop {
            let Some(t) = self.peek().cloned() else {
                return err(pos, "unclosed action");
            };
            match t.tok {
                Tok::Right | Tok::Pipe | Tok::RParen(_) => break,
                _ => {
                    self.i += 1;
                    let arg = self.operand(t)?;
                    cmd.args.push(arg);
                }
            }
        }
        if cmd.args.is_empty() {
            let at = self.peek().map_or(self.eof, |t| t.pos);
            return err(at, "missing value for command");
        }
        if let Arg::Const(Value::Nil, p) = cmd.args[0] {
            return err(p, "nil is not a command");
        }
        Ok(cmd)
    }

    fn operand(&mut self, t: Token) -> Result<Arg, SyntaxError> {
        Ok(match t.tok {
            Tok::Ident(name) => {
                funcs::check_defined(&name).map_err(|msg| SyntaxError { pos: t.pos, msg })?;
                Arg::Func(name, t.pos)
            }
            Tok::Dot => Arg::Dot(t.pos),
            Tok::Fields(chain) => Arg::Fields(chain, t.pos),
            Tok::Var(name, chain) => {
                if !self.vars.contains(&name) {
                    return err(t.pos, format!("undefined variable {name:?}"));
                }
                Arg::Var(name, chain, t.pos)
            }
            Tok::Const(v) => Arg::Const(v, t.pos),
            Tok::LParen => {
                self.enter(t.pos)?;
                let pipe = self.pipeline(true, false, t.pos)?;
                self.depth -= 1;
                match self.next() {
                    Some(Token {
                        tok: Tok::RParen(chain),
                        ..
                    }) => Arg::Pipe(Box::new(pipe), chain, t.pos),
                    Some(other) => {
                        return err(
                            other.pos,
                            format!("unexpected {} in operand", describe(&other.tok)),
                        );
                    }
                    None => return err(t.pos, "unclosed left paren"),
                }
            }
            other => return err(t.pos, format!("unexpected {} in operand", describe(&other))),
        })
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Text(_) => "text".into(),
        Tok::Left => "left delimiter".into(),
        Tok::Right => "right delimiter".into(),
        Tok::Ident(s) => format!("<{s}>"),
        Tok::Fields(c) => format!("<.{}>", c.join(".")),
        Tok::Dot => "<.>".into(),
        Tok::Var(v, _) => format!("<{v}>"),
        Tok::Const(v) => format!("<{}>", v.go_string()),
        Tok::LParen => "<(>".into(),
        Tok::RParen(_) => "<)>".into(),
        Tok::Pipe => "<|>".into(),
        Tok::Comma => "<,>".into(),
        Tok::Declare => "<:=>".into(),
        Tok::Assign => "<=>".into(),
        Tok::Kw(k) => format!("<{}>", format!("{k:?}").to_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_as_go_reads_them() {
        for (text, want) in [
            ("42", Value::Int(42)),
            ("-7", Value::Int(-7)),
            ("0x1F", Value::Int(31)),
            ("017", Value::Int(15)),
            ("1_000", Value::Int(1000)),
            ("1.5", Value::Float(1.5)),
            ("1e3", Value::Float(1000.0)),
        ] {
            assert_eq!(parse_number(text), Some(want), "{text}");
        }
        for bad in ["-", "0xZZ", "1.2.3", "12abc"] {
            assert_eq!(parse_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn trim_markers_and_comments_leave_only_the_text_that_stays() {
        let nodes = parse("a  {{- /* c */ -}}  b {{/* x */}} c", "{{", "}}").unwrap();
        assert_eq!(
            nodes,
            vec![
                Node::Text("a".into()),
                Node::Text("b ".into()),
                Node::Text(" c".into())
            ]
        );
    }
}
