use super::*;

fn env() -> BTreeMap<String, String> {
    [
        ("NOMAD_PORT_http", "8080"),
        ("NAME", "world"),
        ("LIST", "a,b,c"),
        ("NUM", "42"),
        ("EMPTY", ""),
        ("B64", "aGVsbG8="),
        ("SPACED", "  padded  "),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn services() -> FixedServices {
    let inst = |addr: &str, port: i32, tags: &[&str]| ServiceInstance {
        name: "api".into(),
        address: addr.into(),
        port,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        ..ServiceInstance::default()
    };
    FixedServices {
        services: [(
            "api".to_owned(),
            vec![
                inst("10.0.0.1", 8000, &["prod"]),
                inst("10.0.0.2", 8001, &["canary"]),
            ],
        )]
        .into(),
    }
}

fn render(text: &str) -> Result<String, TemplateError> {
    render_delims(text, "", "", false)
}

fn render_delims(
    text: &str,
    left: &str,
    right: &str,
    err_missing_key: bool,
) -> Result<String, TemplateError> {
    let env = env();
    let source = services();
    let data = Data {
        env: &env,
        namespace: "default",
        source: &source,
        err_missing_key,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(render_text("local/out.conf", text, left, right, &data))
}

#[test]
fn templates_render_as_consul_template_does() {
    let cases: &[(&str, &str)] = &[
        ("plain text", "plain text"),
        ("port={{ env \"NOMAD_PORT_http\" }}", "port=8080"),
        ("{{ env \"MISSING\" }}|", "|"),
        ("{{ env \"NAME\" | toUpper }}", "WORLD"),
        ("{{ \"ABC\" | toLower }}", "abc"),
        ("[{{ env \"SPACED\" | trimSpace }}]", "[padded]"),
        ("{{ replaceAll \"o\" \"0\" \"foo\" }}", "f00"),
        ("{{ \"foo\" | replaceAll \"o\" \"0\" }}", "f00"),
        ("{{ join \"-\" (split \",\" (env \"LIST\")) }}", "a-b-c"),
        ("{{ env \"LIST\" | split \",\" | join \";\" }}", "a;b;c"),
        (
            "{{ range split \",\" (env \"LIST\") }}<{{ . }}>{{ end }}",
            "<a><b><c>",
        ),
        (
            "{{ range $i, $v := split \",\" \"x,y\" }}{{ $i }}={{ $v }} {{ end }}",
            "0=x 1=y ",
        ),
        (
            "{{ range split \",\" \"\" }}x{{ else }}none{{ end }}",
            "none",
        ),
        (
            "{{ range split \",\" \"a,b,c\" }}{{ if eq . \"b\" }}{{ continue }}{{ end }}{{ . }}{{ end }}",
            "ac",
        ),
        (
            "{{ range split \",\" \"a,b,c\" }}{{ if eq . \"b\" }}{{ break }}{{ end }}{{ . }}{{ end }}",
            "a",
        ),
        ("{{ printf \"%s:%d\" \"h\" 80 }}", "h:80"),
        ("{{ printf \"%v-%v\" true 2.5 }}", "true-2.5"),
        ("{{ parseInt (env \"NUM\") | printf \"%d\" }}", "42"),
        ("{{ if gt (parseInt (env \"NUM\")) 40 }}big{{ end }}", "big"),
        (
            "{{ if eq (env \"NAME\") \"x\" }}x{{ else if eq (env \"NAME\") \"world\" }}w{{ else }}?{{ end }}",
            "w",
        ),
        ("{{ if not (env \"EMPTY\") }}empty{{ end }}", "empty"),
        (
            "{{ if and (env \"NAME\") (env \"EMPTY\") }}y{{ else }}n{{ end }}",
            "n",
        ),
        ("{{ or (env \"EMPTY\") \"fallback\" }}", "fallback"),
        ("{{ and 1 0 }}/{{ and 1 2 }}", "0/2"),
        (
            "{{ if ne 1 2 }}ne{{ end }}{{ if lt 1 2 }}lt{{ end }}{{ if le 2 2 }}le{{ end }}{{ if ge 3 2 }}ge{{ end }}",
            "neltlege",
        ),
        ("{{ if eq 1 3 2 1 }}any{{ end }}", "any"),
        (
            "{{ with env \"NAME\" }}hello {{ . }}{{ end }}",
            "hello world",
        ),
        (
            "{{ with env \"EMPTY\" }}x{{ else }}nothing{{ end }}",
            "nothing",
        ),
        ("{{ with $n := env \"NAME\" }}{{ $n }}{{ end }}", "world"),
        ("{{ $x := \"a\" }}{{ $x = \"b\" }}{{ $x }}", "b"),
        (
            "{{ \"hi\" | base64Encode }}/{{ env \"B64\" | base64Decode }}",
            "aGk=/hello",
        ),
        ("{{ split \",\" \"a,b\" | toJSON }}", "[\"a\",\"b\"]"),
        ("{{ (parseJSON \"{\\\"a\\\":{\\\"b\\\":7}}\").a.b }}", "7"),
        ("{{ (parseJSON \"{}\").missing }}", "<no value>"),
        (
            "{{ len (split \",\" \"a,b,c\") }} {{ index (split \",\" \"a,b,c\") 1 }}",
            "3 b",
        ),
        ("a  {{- \" b \" -}}  c", "a b c"),
        ("x {{/* a comment */}} y", "x  y"),
        ("line1\n{{- /* gone */ -}}\nline2", "line1line2"),
        ("{{ `raw \\n` }}", "raw \\n"),
        ("{{ 'a' }} {{ 0x10 }} {{ -3 }} {{ 1.5 }}", "97 16 -3 1.5"),
        ("{{ print 1 2 \"a\" \"b\" }}", "1 2ab"),
        ("{{ add 2 3 }} {{ 10 | subtract 4 }}", "5 6"),
        (
            "{{ range nomadService \"api\" }}{{ .Address }}:{{ .Port }} {{ end }}",
            "10.0.0.1:8000 10.0.0.2:8001 ",
        ),
        (
            "{{ range nomadService \"canary.api\" }}{{ .Address }}{{ end }}",
            "10.0.0.2",
        ),
        (
            "{{ range nomadService \"nobody\" }}x{{ else }}no instances{{ end }}",
            "no instances",
        ),
        (
            "{{ range $s := nomadService \"api\" }}{{ $s.Port }},{{ end }}",
            "8000,8001,",
        ),
        (
            "{{ with index (nomadService \"api\") 0 }}{{ .Name }}{{ end }}",
            "api",
        ),
        ("{{ \"a\" | printf \"%s-%s\" \"b\" }}", "b-a"),
        (
            "{{ if regexMatch \"^w.*d$\" (env \"NAME\") }}match{{ end }}",
            "match",
        ),
        (
            "{{ \"tag1,tag2\" | split \",\" | toJSON }}",
            "[\"tag1\",\"tag2\"]",
        ),
    ];
    for (text, want) in cases {
        match render(text) {
            Ok(out) => assert_eq!(&out, want, "template: {text}"),
            Err(e) => panic!("template {text:?} failed: {e}"),
        }
    }
}

#[test]
fn custom_delimiters_leave_the_default_ones_alone() {
    let out = render_delims(
        "{{ not me }} [[ env \"NAME\" ]] [[- \" x\" ]]",
        "[[",
        "]]",
        false,
    )
    .unwrap();
    assert_eq!(out, "{{ not me }} world x");
}

#[test]
fn missing_keys_error_only_when_asked() {
    let text = "{{ (parseJSON \"{}\").nope }}";
    assert_eq!(render_delims(text, "", "", false).unwrap(), "<no value>");
    let err = render_delims(text, "", "", true).unwrap_err().to_string();
    assert!(err.contains("map has no entry for key \"nope\""), "{err}");
}

#[test]
fn errors_name_the_template_line_and_column() {
    let cases: &[(&str, &str)] = &[
        (
            "a\n  {{ key \"x\" }}",
            "template \"local/out.conf\": 2:6: function \"key\" is not supported: it reads Consul's KV store",
        ),
        (
            "{{ secret \"x\" }}",
            "1:4: function \"secret\" is not supported: it reads Vault",
        ),
        (
            "{{ nomadVar \"x\" }}",
            "1:4: function \"nomadVar\" is not supported",
        ),
        ("{{ bogus }}", "1:4: function \"bogus\" not defined"),
        (
            "x\n\n{{ if true }}",
            "3:1: unexpected EOF: {{if}} has no {{end}}",
        ),
        ("{{ end }}", "1:1: unexpected {{end}}"),
        ("{{ else }}", "1:1: unexpected {{else}}"),
        ("{{ \"abc }}", "1:4: unterminated quoted string"),
        ("ok {{ env \"A\"", "1:4: unclosed action"),
        ("{{ $x }}", "1:4: undefined variable \"$x\""),
        ("{{ /* c */ }}", "1:4: unrecognized character in action"),
        ("{{/* never closed }}", "1:1: unclosed comment"),
        ("{{ break }}", "1:1: {{break}} outside {{range}}"),
        (
            "{{ define \"x\" }}{{ end }}",
            "1:4: {{define}} is not supported",
        ),
        ("{{ ( }}", "unclosed left paren"),
        ("{{ 12abc }}", "1:4: bad number syntax: \"12abc\""),
        ("{{ nil }}", "1:4: nil is not a command"),
        (
            "line\n  {{ toUpper 5 }}",
            "template \"local/out.conf\": 2:6: executing: wrong type for value; expected string; got int",
        ),
        (
            "{{ parseInt \"x1\" }}",
            "1:4: executing: error calling parseInt: parseInt: strconv.ParseInt: parsing \"x1\": invalid syntax",
        ),
        (
            "{{ toUpper }}",
            "1:4: executing: wrong number of args for toUpper: want 1 got 0",
        ),
        (
            "{{ eq 1 \"1\" }}",
            "1:4: executing: error calling eq: incompatible types for comparison",
        ),
        (
            "{{ lt true false }}",
            "executing: error calling lt: invalid type for comparison",
        ),
        (
            "{{ .Foo }}",
            "1:4: executing: nil data; no entry for key \"Foo\"",
        ),
        (
            "{{ range nomadService \"api\" }}{{ .Nope }}{{ end }}",
            "1:34: executing: can't evaluate field Nope in type *NomadService",
        ),
        (
            "{{ range \"abc\" }}{{ end }}",
            "executing: range can't iterate over abc",
        ),
        (
            "{{ nomadService \"bad name!\" }}",
            "executing: error calling nomadService: invalid service query \"bad name!\"",
        ),
        ("{{ \"x\" | 5 }}", "can't give argument to non-function 5"),
        (
            "{{ index (split \",\" \"a\") 3 }}",
            "error calling index: index out of range: 3",
        ),
        ("{{ base64Decode \"!!\" }}", "error calling base64Decode"),
        (
            "{{ divide 0 1 }}",
            "error calling divide: divide: division by zero",
        ),
    ];
    for (text, want) in cases {
        match render(text) {
            Ok(out) => panic!("template {text:?} rendered {out:?}; wanted an error with {want:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(want),
                    "template {text:?}:\n  got  {msg}\n  want …{want}…"
                );
            }
        }
    }
}

#[test]
fn env_files_parse_as_nomad_reads_them() {
    let text = "# a comment\n\nPLAIN=value\nexport EXPORTED = spaced out  \nDQ=\"a \\\"b\\\"\\n\"\nSQ='it''s #not a comment'\nHASH=before # after\nEMPTY=\nURL=\"http://x/#y\"\r\n";
    let vars = parse_env_file(text).unwrap();
    let want: BTreeMap<String, String> = [
        ("PLAIN", "value"),
        ("EXPORTED", "spaced out"),
        ("DQ", "a \"b\"\n"),
        ("SQ", "its #not a comment"),
        ("HASH", "before"),
        ("EMPTY", ""),
        ("URL", "http://x/#y"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(vars, want);

    for (text, line, msg) in [
        ("OK=1\nno separator", 2, "missing \"=\""),
        ("=x", 1, "empty key"),
        ("1X=y", 1, "key must start with [A-Za-z_]"),
        ("A-B=y", 1, "key characters must be [A-Za-z0-9_]"),
        ("A=\"open", 1, "unmatched \""),
        ("\nA='open", 2, "unmatched '"),
        ("A=\"bad \\q\"", 1, "invalid escape sequence: q"),
    ] {
        let (got_line, got) = parse_env_file(text).unwrap_err();
        assert_eq!(got_line, line, "{text:?}");
        assert!(got.contains(msg), "{text:?}: {got}");
    }
}

fn task_templates_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("task");
    for sub in ["local", "secrets", "tmp"] {
        std::fs::create_dir_all(task.join(sub)).unwrap();
    }
    (dir, task)
}

fn tmpl(dest: &str, data: &str) -> Template {
    Template {
        dest_path: dest.into(),
        embedded_tmpl: data.into(),
        perms: "0644".into(),
        left_delim: "{{".into(),
        right_delim: "}}".into(),
        change_mode: "restart".into(),
        ..Template::default()
    }
}

#[tokio::test]
async fn task_templates_are_written_confined_with_their_mode_and_env() {
    use std::os::unix::fs::PermissionsExt as _;
    let (_dir, task) = task_templates_dir();
    let mut env = env();
    env.insert(
        "NOMAD_SECRETS_DIR".into(),
        task.join("secrets").display().to_string(),
    );
    let node = Node::default();
    let source = FixedServices::default();
    let cx = TaskContext {
        task_dir: &task,
        env: &env,
        node: &node,
        namespace: "default",
        source: &source,
    };
    std::fs::write(task.join("local/in.tpl"), "from source: {{ env \"NAME\" }}").unwrap();
    let mut from_source = tmpl("local/from-source.txt", "");
    from_source.source_path = "local/in.tpl".into();
    let mut secret = tmpl(
        "${NOMAD_SECRETS_DIR}/app.env",
        "TOKEN=\"s3cr{{ \"e\" }}t\"\nPORT={{ env \"NOMAD_PORT_http\" }}\n",
    );
    secret.envvars = true;
    secret.perms = "0600".into();
    let templates = vec![
        tmpl(
            "local/nested/dir/app.conf",
            "port = {{ env \"NOMAD_PORT_http\" }}\n",
        ),
        from_source,
        secret,
        tmpl("/local/rebased.txt", "rebased"),
    ];
    let vars = render_all(&templates, &cx).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(task.join("local/nested/dir/app.conf")).unwrap(),
        "port = 8080\n"
    );
    assert_eq!(
        std::fs::read_to_string(task.join("local/from-source.txt")).unwrap(),
        "from source: world"
    );
    assert_eq!(
        std::fs::read_to_string(task.join("local/rebased.txt")).unwrap(),
        "rebased"
    );
    let mode = std::fs::metadata(task.join("secrets/app.env"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let conf_mode = std::fs::metadata(task.join("local/nested/dir/app.conf"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(conf_mode & 0o777, 0o644);
    let want: BTreeMap<String, String> = [("TOKEN", "s3cret"), ("PORT", "8080")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(vars, want);
    assert_eq!(read_env(&templates, &cx).unwrap(), want);

    // Escapes are refused, naming the template.
    for (t, want) in [
        (tmpl("../outside.txt", "x"), "escapes the task directory"),
        (tmpl("local/../../x", "x"), "escapes the task directory"),
        (
            {
                let mut t = tmpl("local/y", "");
                t.source_path = "/etc/passwd".into();
                t
            },
            "source: \"/etc/passwd\" escapes the task directory",
        ),
        (
            {
                let mut t = tmpl("local/z", "x");
                t.perms = "rw-r--r--".into();
                t
            },
            "perms \"rw-r--r--\" is not an octal file mode",
        ),
        (
            {
                let mut t = tmpl("local/bad.env", "not an env line");
                t.envvars = true;
                t
            },
            "line 1: missing \"=\"",
        ),
    ] {
        let err = render_all(std::slice::from_ref(&t), &cx)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
        assert!(err.starts_with("template \""), "{err}");
    }
    // A symlink planted in the task directory does not lead a template out of it.
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), task.join("local/link")).unwrap();
    let err = render_all(&[tmpl("local/link/x", "x")], &cx)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("leads out of the task directory"), "{err}");
    assert!(!outside.path().join("x").exists());
    // A symlink at the destination itself is replaced, not written through.
    let target = outside.path().join("victim");
    std::fs::write(&target, "untouched").unwrap();
    std::os::unix::fs::symlink(&target, task.join("local/dest-link")).unwrap();
    render_all(&[tmpl("local/dest-link", "new")], &cx)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    assert_eq!(
        std::fs::read_to_string(task.join("local/dest-link")).unwrap(),
        "new"
    );
}

#[tokio::test]
async fn the_server_source_reads_registrations_and_treats_404_as_none() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut paths = Vec::new();
        for _ in 0..2 {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req.split_whitespace().nth(1).unwrap().to_owned();
            let (status, body) = if path.starts_with("/v1/service/web") {
                (
                    "200 OK",
                    r#"[{"ServiceName":"web","Address":"127.0.0.9","Port":9090,"Tags":["a"],"Namespace":"default"}]"#,
                )
            } else {
                ("404 Not Found", "service not found")
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await.unwrap();
            paths.push(path);
        }
        paths
    });
    let source = ServerServices::new(reqwest::Client::new(), vec![format!("http://{addr}")]);
    let env = BTreeMap::new();
    let data = Data {
        env: &env,
        namespace: "default",
        source: &source,
        err_missing_key: false,
    };
    let out = render_text(
        "t",
        "{{ range nomadService \"web\" }}{{ .Address }}:{{ .Port }}{{ end }}|{{ range nomadService \"none\" }}x{{ else }}empty{{ end }}",
        "",
        "",
        &data,
    )
    .await
    .unwrap();
    assert_eq!(out, "127.0.0.9:9090|empty");
    let paths = server.await.unwrap();
    assert!(
        paths
            .iter()
            .any(|p| p == "/v1/service/web?namespace=default"),
        "{paths:?}"
    );
}

/// A lookup for the fuzzer: a fixed environment and two instances of every service.
struct FuzzLookup(BTreeMap<String, String>);

impl Lookup for FuzzLookup {
    fn env(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    fn nomad_service(&self, query: &str) -> Result<Vec<Value>, String> {
        let (_, name) = service_query(query)?;
        let inst = ServiceInstance {
            name: name.to_owned(),
            address: "127.0.0.1".into(),
            port: 80,
            tags: vec!["t".into()],
            ..ServiceInstance::default()
        };
        Ok(vec![instance_value(&inst), instance_value(&inst)])
    }
}

/// Parses and, when that works, runs `text`; neither may panic, and errors point inside it.
fn parse_and_run(text: &str, left: &str, right: &str) {
    match parse("fuzz", text, left, right) {
        Ok(parsed) => {
            let lookup = FuzzLookup(env());
            let opts = Options {
                lookup: &lookup,
                err_missing_key: text.len().is_multiple_of(2),
            };
            if let Err(e) = exec::execute(&parsed.nodes, &opts) {
                let (line, col) = line_col(text, e.pos);
                assert!(line >= 1 && col >= 1 && line <= text.lines().count().max(1) + 1);
            }
        }
        Err(TemplateError::Parse { line, col, .. }) => {
            assert!(line >= 1 && col >= 1 && line <= text.lines().count().max(1) + 1);
        }
        Err(other) => panic!("parse returned a non-parse error: {other}"),
    }
}

const SEEDS: &[&str] = &[
    "{{ range $i, $s := nomadService \"api\" }}{{ $i }}={{ $s.Address }}:{{ .Port }}{{ else }}none{{ end }}",
    "{{- if eq (env \"NAME\") \"x\" -}}a{{ else if gt (len (split \",\" (env \"LIST\"))) 2 }}b{{ else }}c{{ end }}",
    "{{ with $v := env \"NUM\" | parseInt }}{{ printf \"%05d|%s|%v\" $v \"s\" true }}{{ end }}",
    "{{/* comment */}}{{ (parseJSON \"{\\\"a\\\":[1,2]}\").a | toJSON }}{{ range split \",\" \"a,b\" }}{{ if eq . \"a\" }}{{ continue }}{{ end }}{{ . }}{{ break }}{{ end }}",
    "x {{ \"a\" | replaceAll \"a\" \"b\" | toUpper | base64Encode | base64Decode }} {{ 'c' }} {{ 0x1f }} {{ -1.5e3 }} {{ `raw` }}",
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)
    ))]

    #[test]
    fn the_parser_never_panics_on_random_text(
        text in "[{}()|$.\"`' a-zA-Z0-9\\\\/*:=,\\-\n]{0,120}",
    ) {
        parse_and_run(&text, "{{", "}}");
        parse_and_run(&text, "[[", "]]");
    }

    #[test]
    fn the_parser_never_panics_on_mutated_templates(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec((0usize..400, 0u8..3, proptest::char::any()), 1..6),
    ) {
        let mut chars: Vec<char> = SEEDS[seed].chars().collect();
        for (at, op, c) in edits {
            let at = at % (chars.len() + 1);
            match op {
                0 => chars.insert(at, c),
                1 if at < chars.len() => { chars.remove(at); }
                _ if at < chars.len() => chars[at] = c,
                _ => chars.push(c),
            }
        }
        let text: String = chars.into_iter().collect();
        parse_and_run(&text, "{{", "}}");
    }

    #[test]
    fn env_files_never_panic(text in "\\PC{0,200}") {
        let _ = parse_env_file(&text);
    }
}

#[test]
fn the_seed_templates_render() {
    let lookup = FuzzLookup(env());
    let opts = Options {
        lookup: &lookup,
        err_missing_key: false,
    };
    let out: Vec<String> = SEEDS
        .iter()
        .map(|s| exec::execute(&parse("seed", s, "{{", "}}").unwrap().nodes, &opts).unwrap())
        .collect();
    assert_eq!(
        out,
        [
            "0=127.0.0.1:801=127.0.0.1:80",
            "b",
            "00042|s|true",
            "[1,2]b",
            "x B 99 31 -1500 raw",
        ]
    );
}

#[tokio::test]
async fn rerendering_rewrites_only_changed_files_and_names_the_services_read() {
    let (_dir, task) = task_templates_dir();
    let env = env();
    let node = Node::default();
    let mut source = services();
    let templates = vec![
        tmpl(
            "local/api.txt",
            "{{ range nomadService \"api\" }}{{ .Address }}:{{ .Port }}\n{{ end }}",
        ),
        tmpl("local/static.txt", "port {{ env \"NOMAD_PORT_http\" }}"),
        tmpl(
            "local/db.txt",
            "{{ range nomadService \"db\" }}{{ .Port }}{{ end }}",
        ),
    ];
    {
        let cx = TaskContext {
            task_dir: &task,
            env: &env,
            node: &node,
            namespace: "default",
            source: &source,
        };
        render_all(&templates, &cx).await.unwrap();
        let again = rerender_all(&templates, &cx).await.unwrap();
        assert!(again.changed.is_empty(), "nothing changed: {again:?}");
        assert_eq!(
            again.services,
            BTreeSet::from(["api".to_owned(), "db".to_owned()])
        );
    }
    // One instance goes away: only the file that lists it is rewritten.
    source.services.get_mut("api").unwrap().pop();
    let cx = TaskContext {
        task_dir: &task,
        env: &env,
        node: &node,
        namespace: "default",
        source: &source,
    };
    let changed = rerender_all(&templates, &cx).await.unwrap();
    assert_eq!(changed.changed, [0]);
    assert_eq!(
        std::fs::read_to_string(task.join("local/api.txt")).unwrap(),
        "10.0.0.1:8000\n"
    );
    // A file removed from under the task counts as changed and is written again.
    std::fs::remove_file(task.join("local/static.txt")).unwrap();
    assert_eq!(rerender_all(&templates, &cx).await.unwrap().changed, [1]);
    assert_eq!(
        std::fs::read_to_string(task.join("local/static.txt")).unwrap(),
        "port 8080"
    );
}
