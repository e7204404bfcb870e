//! `caravan apply -f FILE|DIR`: register every job manifest and TrafficSplit in the files given
//! (any supported format, several documents per YAML file), one line per object as kubectl
//! prints them: `job.caravan.io/web created|configured|unchanged`,
//! `trafficsplit.caravan.io/web created|configured|unchanged`.

use super::CliError;
use super::conn::{ApiArgs, block_on};
use super::job::{VarArgs, read_source};
use crate::client::{Client, QueryOptions};
use caravan_schemas::job::Job;
use caravan_schemas::jobspec::{self, Document};
use caravan_schemas::lb::TrafficSplit;
use clap::Args;
use std::path::Path;

/// File names `apply` picks up from a directory.
const EXTENSIONS: &[&str] = &["hcl", "nomad", "json", "yaml", "yml"];

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub vars: VarArgs,
    /// A manifest file, a directory of them, or `-` for standard input (repeatable).
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR"
    )]
    pub files: Vec<String>,
}

/// The files named by `-f`: a directory's job files (not recursive), sorted by name.
pub fn expand(paths: &[String]) -> Result<Vec<String>, CliError> {
    let mut out = Vec::new();
    for p in paths {
        let path = Path::new(p);
        if p != "-" && path.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| CliError::new(1, format!("reading directory {p}: {e}")))?;
            let mut files: Vec<String> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.is_file())
                .filter(|f| {
                    f.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
                })
                .map(|f| f.display().to_string())
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(CliError::new(
                    1,
                    format!("no job files ({}) in {p}", EXTENSIONS.join(", ")),
                ));
            }
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// What registering did to the job: `created`, `configured` or `unchanged`.
pub fn outcome(previous_modify_index: Option<i64>, new_modify_index: i64) -> &'static str {
    match previous_modify_index {
        None => "created",
        Some(old) if old == new_modify_index => "unchanged",
        Some(_) => "configured",
    }
}

async fn apply_job(client: &Client, job: &Job) -> Result<&'static str, String> {
    let previous = match client.job(job.id.as_str()).await {
        Ok(j) => Some(j.job_modify_index),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.to_string()),
    };
    let resp = client
        .register_job(job, None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(outcome(previous, resp.job_modify_index))
}

async fn apply_split(client: &Client, split: &TrafficSplit) -> Result<&'static str, String> {
    // A namespace the manifest names, when the client is not set to one, is asked for.
    let opts = match client.config().namespace {
        None => QueryOptions::default().param("namespace", split.namespace.as_str()),
        Some(_) => QueryOptions::default(),
    };
    let previous = match client.traffic_split(&split.name, &opts).await {
        Ok(s) => Some(s.modify_index),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.to_string()),
    };
    let index = client
        .put_traffic_split(split)
        .await
        .map_err(|e| e.to_string())?;
    Ok(outcome(previous, index))
}

pub fn run(args: ApplyArgs) -> Result<i32, CliError> {
    let files = expand(&args.files)?;
    let inputs = args.vars.inputs()?;
    let client = args.api.client()?;
    block_on(async move {
        let mut failed = 0;
        for file in &files {
            let (name, text) = read_source(file)?;
            let docs = match jobspec::decode(&name, &text, &inputs) {
                Ok(docs) => docs,
                Err(e) => {
                    failed += 1;
                    eprintln!("Error parsing {name}:\n{e}");
                    continue;
                }
            };
            for doc in docs {
                let mut job = match doc {
                    Document::Job(job) => job,
                    Document::TrafficSplit(mut split) => {
                        if let Some(ns) = &client.config().namespace
                            && split.namespace.as_str() == "default"
                            && ns != "*"
                        {
                            split.namespace = caravan_schemas::ids::Namespace::new(ns.clone());
                        }
                        match apply_split(&client, &split).await {
                            Ok(what) => println!("trafficsplit.caravan.io/{} {what}", split.name),
                            Err(e) => {
                                failed += 1;
                                eprintln!(
                                    "Error applying TrafficSplit {:?} from {name}: {e}",
                                    split.name
                                );
                            }
                        }
                        continue;
                    }
                };
                super::conn::place_in_namespace(&mut job, &client);
                match apply_job(&client, &job).await {
                    Ok(what) => println!("job.caravan.io/{} {what}", job.id),
                    Err(e) => {
                        failed += 1;
                        eprintln!("Error applying job {:?} from {name}: {e}", job.id.as_str());
                    }
                }
            }
        }
        Ok(i32::from(failed > 0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        assert_eq!(outcome(None, 5), "created");
        assert_eq!(outcome(Some(5), 5), "unchanged");
        assert_eq!(outcome(Some(5), 9), "configured");
    }

    #[test]
    fn directories_expand_to_their_job_files() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.yaml", "a.nomad.hcl", "notes.txt", "c.json"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let d = dir.path().display().to_string();
        let files = expand(std::slice::from_ref(&d)).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| {
                Path::new(f)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["a.nomad.hcl", "b.yaml", "c.json"]);
        assert_eq!(expand(&["-".to_owned()]).unwrap(), ["-"]);
        let empty = tempfile::tempdir().unwrap();
        assert!(expand(&[empty.path().display().to_string()]).is_err());
    }
}
