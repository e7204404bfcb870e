use super::*;
use std::os::unix::fs::PermissionsExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

struct Task {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn task() -> Task {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("task");
    for sub in ["local", "secrets", "tmp"] {
        std::fs::create_dir_all(path.join(sub)).unwrap();
    }
    Task { _dir: dir, path }
}

fn artifact(source: &str) -> TaskArtifact {
    TaskArtifact {
        getter_source: source.into(),
        getter_mode: "any".into(),
        relative_dest: "local/".into(),
        ..TaskArtifact::default()
    }
}

fn env_for(task: &Task) -> BTreeMap<String, String> {
    [
        (
            "NOMAD_TASK_DIR".to_owned(),
            task.path.join("local").display().to_string(),
        ),
        ("VERSION".to_owned(), "v2".to_owned()),
    ]
    .into()
}

async fn fetch(task: &Task, a: &TaskArtifact) -> Result<(), ArtifactError> {
    fetch_with(task, a, Limits::default()).await
}

async fn fetch_with(task: &Task, a: &TaskArtifact, limits: Limits) -> Result<(), ArtifactError> {
    let fetcher = Fetcher::new(limits).unwrap();
    let mut node = Node::default();
    node.attributes.insert("cpu.arch".into(), "amd64".into());
    fetcher.fetch(a, &task.path, &env_for(task), &node).await
}

/// A tar.gz (or tar) built with the tar crate.
fn tar_gz(entries: &[(&str, &[u8], u32)], gzip: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    if !gzip {
        return tar;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// A tar whose entries are written raw, so they can hold what tar::Builder refuses.
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    encode_hex(&sha2::Sha256::digest(b))
}

#[tokio::test]
async fn a_local_tar_gz_is_unpacked_with_its_modes() {
    let t = task();
    let src = tempfile::tempdir().unwrap();
    let archive = tar_gz(
        &[
            ("bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755),
            ("conf/app.conf", b"x=1\n", 0o4644),
        ],
        true,
    );
    let path = write(src.path(), "app-v2.tar.gz", &archive);
    let mut a = artifact(path.to_str().unwrap());
    a.relative_dest = "local/app".into();
    fetch(&t, &a).await.unwrap();
    let run = t.path.join("local/app/bin/run.sh");
    assert_eq!(
        std::fs::read_to_string(&run).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        std::fs::metadata(&run).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    // No setuid bit survives.
    let conf = t.path.join("local/app/conf/app.conf");
    assert_eq!(
        std::fs::metadata(&conf).unwrap().permissions().mode() & 0o7777,
        0o644
    );
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&t.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !["local", "secrets", "tmp"].contains(&n.as_str()))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn files_archive_false_mode_file_and_interpolation() {
    let t = task();
    let src = tempfile::tempdir().unwrap();
    let tar = tar_gz(&[("a.txt", b"a", 0o644)], false);
    write(src.path(), "bundle-v2.tar", &tar);
    write(src.path(), "plain.txt", b"plain");
    // A plain file lands under its own name in the destination directory.
    let plain = format!("file://{}/plain.txt", src.path().display());
    fetch(&t, &artifact(&plain)).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(t.path.join("local/plain.txt")).unwrap(),
        "plain"
    );
    // archive = false keeps an archive as it is; ${…} is filled in the source and destination.
    let mut a = artifact(&format!("{}/bundle-${{VERSION}}.tar", src.path().display()));
    a.getter_options.insert("archive".into(), "false".into());
    a.relative_dest = "${NOMAD_TASK_DIR}/${attr.cpu.arch}".into();
    fetch(&t, &a).await.unwrap();
    assert_eq!(
        std::fs::read(t.path.join("local/amd64/bundle-v2.tar")).unwrap(),
        tar
    );
    // Mode file writes the destination path itself.
    let mut a = artifact(&plain);
    a.getter_mode = "file".into();
    a.relative_dest = "local/renamed.cfg".into();
    fetch(&t, &a).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(t.path.join("local/renamed.cfg")).unwrap(),
        "plain"
    );
    // Mode dir refuses a plain file.
    let mut a = artifact(&plain);
    a.getter_mode = "dir".into();
    let err = fetch(&t, &a).await.unwrap_err().to_string();
    assert!(
        err.contains("mode \"dir\" needs an archive or a directory"),
        "{err}"
    );
    // A local directory is copied.
    std::fs::create_dir_all(src.path().join("tree/sub")).unwrap();
    write(&src.path().join("tree/sub"), "f", b"deep");
    std::os::unix::fs::symlink("sub/f", src.path().join("tree/link")).unwrap();
    let mut a = artifact(&src.path().join("tree").display().to_string());
    a.relative_dest = "local/tree".into();
    fetch(&t, &a).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(t.path.join("local/tree/link")).unwrap(),
        "deep"
    );
}

#[tokio::test]
async fn destinations_outside_the_task_dir_are_refused() {
    let t = task();
    let src = tempfile::tempdir().unwrap();
    let plain = write(src.path(), "plain.txt", b"plain");
    for dest in ["../elsewhere", "local/../../x", "/tmp/x"] {
        let mut a = artifact(plain.to_str().unwrap());
        a.relative_dest = dest.into();
        let err = fetch(&t, &a).await.unwrap_err().to_string();
        assert!(err.contains("escapes the task directory"), "{dest}: {err}");
    }
    for (source, want) in [
        (
            "git::https://github.com/x/y",
            "the \"git\" getter is not supported",
        ),
        (
            "github.com/x/y",
            "use an http:// URL, a file:// URL or an absolute local path",
        ),
        ("https://example.com/a.tgz", "https sources need TLS"),
        ("/no/such/file.txt", "reading /no/such/file.txt"),
    ] {
        let err = fetch(&t, &artifact(source)).await.unwrap_err().to_string();
        assert!(err.contains(want), "{source}: {err}");
    }
    let err = fetch(
        &t,
        &artifact(&format!("{}/x.tar.bz2", src.path().display())),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains(".tar.bz2 archives are not supported"), "{err}");
}

#[tokio::test]
async fn archive_entries_that_escape_are_refused() {
    let src = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            raw_tar(&[("../../evil", tar::EntryType::Regular, "", b"x")]),
            "archive entry \"../../evil\": its path is absolute or climbs out",
        ),
        (
            "absolute",
            raw_tar(&[("/tmp/caravan-evil", tar::EntryType::Regular, "", b"x")]),
            "its path is absolute or climbs out",
        ),
        (
            "absolute symlink",
            raw_tar(&[("etc", tar::EntryType::Symlink, "/etc", b"")]),
            "a symlink to the absolute path /etc",
        ),
        (
            "climbing symlink",
            raw_tar(&[("up", tar::EntryType::Symlink, "../../..", b"")]),
            "escapes the task directory",
        ),
        (
            "a symlink two levels up, then a file through it",
            raw_tar(&[
                ("d", tar::EntryType::Symlink, "../..", b""),
                ("d/x", tar::EntryType::Regular, "", b"x"),
            ]),
            "archive entry \"d\"",
        ),
        (
            "hard link out",
            raw_tar(&[("h", tar::EntryType::Link, "../../../etc/passwd", b"")]),
            "a hard link to ../../../etc/passwd outside the archive",
        ),
        (
            // Fine when it is unpacked, out once `d` becomes a link to `.`.
            "a later entry redirects an earlier link",
            raw_tar(&[
                ("l", tar::EntryType::Symlink, "d/../../x", b""),
                ("d", tar::EntryType::Symlink, ".", b""),
            ]),
            "archive entry \"l\"",
        ),
    ];
    for (what, bytes, want) in cases {
        let t = task();
        let path = write(
            src.path(),
            &format!("{}.tar", what.replace(' ', "-")),
            &bytes,
        );
        let err = fetch(&t, &artifact(path.to_str().unwrap()))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{what}: {err}");
        assert!(!t.path.parent().unwrap().join("evil").exists(), "{what}");
        assert!(!Path::new("/tmp/caravan-evil").exists(), "{what}");
        // No link that leads out is left behind.
        for link in ["local/etc", "local/up", "local/l"] {
            let p = t.path.join(link);
            if p.is_symlink() {
                sandbox::check_real(&sandbox::canonical_root(&t.path).unwrap(), &p)
                    .unwrap_or_else(|e| panic!("{what}: {link} left behind: {e}"));
            }
        }
    }
    // Links that stay inside are fine.
    let t = task();
    let ok = raw_tar(&[
        ("lib/libx.so.1", tar::EntryType::Regular, "", b"elf"),
        ("lib/libx.so", tar::EntryType::Symlink, "libx.so.1", b""),
        ("bin/x", tar::EntryType::Link, "lib/libx.so.1", b""),
    ]);
    let path = write(src.path(), "ok.tar", &ok);
    fetch(&t, &artifact(path.to_str().unwrap())).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(t.path.join("local/lib/libx.so")).unwrap(),
        "elf"
    );
    assert_eq!(
        std::fs::read_to_string(t.path.join("local/bin/x")).unwrap(),
        "elf"
    );
}

#[tokio::test]
async fn zip_archives_unpack_and_escaping_entries_are_refused() {
    use zip::write::SimpleFileOptions;
    let build = |entries: &[(&str, &[u8])]| {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, SimpleFileOptions::default().unix_permissions(0o755))
                .unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    };
    let src = tempfile::tempdir().unwrap();
    let t = task();
    let good = write(
        src.path(),
        "good.zip",
        &build(&[("dir/run", b"#!/bin/sh\n")]),
    );
    fetch(&t, &artifact(good.to_str().unwrap())).await.unwrap();
    let run = t.path.join("local/dir/run");
    assert_eq!(std::fs::read_to_string(&run).unwrap(), "#!/bin/sh\n");
    assert_eq!(
        std::fs::metadata(&run).unwrap().permissions().mode() & 0o777,
        0o755
    );

    let bad = write(src.path(), "bad.zip", &build(&[("../../zip-evil", b"x")]));
    let err = fetch(&t, &artifact(bad.to_str().unwrap()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("archive entry \"../../zip-evil\""), "{err}");
    assert!(!t.path.parent().unwrap().join("zip-evil").exists());
}

#[tokio::test]
async fn checksums_are_verified_before_anything_is_unpacked() {
    let src = tempfile::tempdir().unwrap();
    let archive = tar_gz(&[("x.txt", b"x", 0o644)], true);
    let path = write(src.path(), "x.tgz", &archive);
    let good = sha256_hex(&archive);

    let t = task();
    let mut a = artifact(path.to_str().unwrap());
    a.getter_options
        .insert("checksum".into(), format!("sha256:{good}"));
    fetch(&t, &a).await.unwrap();
    assert!(t.path.join("local/x.txt").exists());

    // In the source's query string, as go-getter reads it; bare hex says its own type.
    let t = task();
    let a = artifact(&format!("file://{}?checksum={good}", path.display()));
    fetch(&t, &a).await.unwrap();

    let t = task();
    let mut a = artifact(path.to_str().unwrap());
    let wrong = "0".repeat(64);
    a.getter_options
        .insert("checksum".into(), format!("sha256:{wrong}"));
    let err = fetch(&t, &a).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!("checksum mismatch: expected sha256:{wrong}, got sha256:{good}")
    );
    assert!(!t.path.join("local/x.txt").exists(), "nothing unpacked");

    for (spec, want) in [
        ("md5:abcd", "a md5 checksum is 32 hex digits, this has 4"),
        ("crc:00", "unknown type"),
        ("sha1:zz", "not hexadecimal"),
        ("file:http://x/sums", "checksum files are not supported"),
    ] {
        let mut a = artifact(path.to_str().unwrap());
        a.getter_options.insert("checksum".into(), spec.into());
        let err = fetch(&t, &a).await.unwrap_err().to_string();
        assert!(err.contains(want), "{spec}: {err}");
    }
    // md5 and sha512 work too.
    for (kind, digest) in [
        ("md5", {
            use md5::Digest as _;
            encode_hex(&md5::Md5::digest(&archive))
        }),
        ("sha512", {
            use sha2::Digest as _;
            encode_hex(&sha2::Sha512::digest(&archive))
        }),
    ] {
        let t = task();
        let mut a = artifact(path.to_str().unwrap());
        a.getter_options
            .insert("checksum".into(), format!("{kind}:{digest}"));
        fetch(&t, &a).await.unwrap();
    }
}

/// Serves one canned response per connection; records the requests.
async fn serve(
    body: Vec<u8>,
    status: &'static str,
    stall: bool,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (body, tx) = (body.clone(), tx.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                if stall {
                    // Hold the connection open without answering until the client gives up.
                    let _ = sock.read(&mut buf).await;
                    return;
                }
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn http_artifacts_carry_headers_and_fail_clearly() {
    let archive = tar_gz(&[("app/start.sh", b"echo started\n", 0o755)], true);
    let (addr, mut requests) = serve(archive.clone(), "200 OK", false).await;
    let t = task();
    let mut a = artifact(&format!(
        "http://{addr}/dl/app.tar.gz?token=abc&checksum=sha256:{}",
        sha256_hex(&archive)
    ));
    a.getter_headers
        .insert("X-Version".into(), "${VERSION}".into());
    fetch(&t, &a).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(t.path.join("local/app/start.sh")).unwrap(),
        "echo started\n"
    );
    let req = requests.recv().await.unwrap();
    let first = req.lines().next().unwrap();
    assert_eq!(first, "GET /dl/app.tar.gz?token=abc HTTP/1.1", "{req}");
    assert!(req.to_ascii_lowercase().contains("x-version: v2"), "{req}");

    // Too large: refused by the size limit.
    let limits = Limits {
        max_download: 10,
        ..Limits::default()
    };
    let err = fetch_with(&t, &artifact(&format!("http://{addr}/x.tgz")), limits)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, "the download is larger than the 10-byte limit");

    // Unpacked contents over the limit.
    let limits = Limits {
        max_unpacked: 5,
        ..Limits::default()
    };
    let err = fetch_with(&task(), &artifact(&format!("http://{addr}/x.tgz")), limits)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "the unpacked contents are larger than the 5-byte limit"
    );

    // A 404.
    let (missing, _r) = serve(b"nope".to_vec(), "404 Not Found", false).await;
    let err = fetch(&t, &artifact(&format!("http://{missing}/gone.txt")))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad response code: 404 Not Found"), "{err}");

    // A server that never answers runs into the deadline.
    let (stalled, _r) = serve(Vec::new(), "200 OK", true).await;
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let err = fetch_with(&t, &artifact(&format!("http://{stalled}/slow.txt")), limits)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, "fetching took longer than 300ms");
}
