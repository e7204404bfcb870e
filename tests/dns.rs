//! The agent's DNS interface, end to end: a real `caravan agent -dev` with `dns { … }` in its
//! config file runs raw_exec tasks offering services, and hickory's DNS client asks it over UDP
//! and TCP for A and SRV records: healthy instances only, NXDOMAIN for unknown names, an empty
//! answer for a service with no healthy instance, and an instance whose check starts failing
//! disappears. A client-only agent (`-dns-port 0`) answers the same through the servers' API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::op::{DnsResponse, ResponseCode};
use hickory_net::proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use support::agent::{DevAgent, reap_tasks, spawn_agent_banner};
use support::eventually;

const MS: i64 = 1_000_000;
const WAIT: Duration = Duration::from_secs(30);

/// A port nothing listens on now (dev agents started by parallel tests hand out the same first
/// dynamic port, so these jobs reserve ports picked here).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A group whose raw_exec task sleeps and offers `services` on its reserved port `http`.
fn group(name: &str, port: u16, services: Value) -> Value {
    json!({
        "Name": name, "Count": 1,
        "Networks": [{"ReservedPorts": [{"Label": "http", "Value": port}]}],
        "RestartPolicy": {"Attempts": 0, "Interval": 600_000 * MS, "Delay": 100 * MS, "Mode": "fail"},
        "Tasks": [{
            "Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/sh", "args": ["-c", "exec sleep 300"]},
            "Resources": {"CPU": 50, "MemoryMB": 32},
            "KillTimeout": 2000 * MS,
            "Services": services,
        }]
    })
}

/// A check named `name` that passes while `down` does not exist. (Two services of one task
/// need differently named checks: Nomad's check ids, which Caravan computes the same way, do
/// not include the service name.)
fn up_unless(name: &str, down: &std::path::Path) -> Value {
    json!([{
        "Name": name, "Type": "script", "Interval": 200 * MS, "Timeout": 2000 * MS,
        "Command": "/bin/sh", "Args": ["-c", format!("test ! -e {}", down.display())],
    }])
}

/// Job `dnsdemo`: group `steady` offers `dnsweb` on `steady` (no check: healthy); group `flaky`
/// offers `dnsweb` and `dnsflaky` on `flaky`, both checked by [`up_unless`].
fn demo_job(steady: u16, flaky: u16, down: &std::path::Path) -> Value {
    json!({"Job": {
        "ID": "dnsdemo", "Type": "service", "Datacenters": ["dc1"],
        "TaskGroups": [
            group("steady", steady, json!([{"Name": "dnsweb", "PortLabel": "http"}])),
            group("flaky", flaky, json!([
                {"Name": "dnsweb", "PortLabel": "http", "Checks": up_unless("web-up", down)},
                {"Name": "dnsflaky", "PortLabel": "http", "Checks": up_unless("flaky-up", down)},
            ])),
        ]
    }})
}

/// One query to `server`, over TCP or UDP; the raw response, whatever its code.
async fn ask(server: SocketAddr, name: &str, rtype: RecordType, tcp: bool) -> DnsResponse {
    let name = Name::from_ascii(name).unwrap();
    let provider = TokioRuntimeProvider::default();
    let mut client = if tcp {
        let (stream, sender) =
            TcpClientStream::new(server, None, Some(Duration::from_secs(5)), provider);
        let (client, bg) =
            Client::<TokioRuntimeProvider>::new(stream.await.expect("a TCP connection"), sender);
        tokio::spawn(bg);
        client
    } else {
        let stream = UdpClientStream::builder(server, provider)
            .with_timeout(Some(Duration::from_secs(5)))
            .build();
        let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
        tokio::spawn(bg);
        client
    };
    client
        .query(name, DNSClass::IN, rtype)
        .await
        .expect("a DNS response")
}

/// The ports of the SRV answers.
fn srv_ports(resp: &DnsResponse) -> BTreeSet<u16> {
    resp.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.port),
            _ => None,
        })
        .collect()
}

fn a_addrs(resp: &DnsResponse) -> Vec<String> {
    resp.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn dns_config(dir: &std::path::Path) -> String {
    let path = dir.join("dns.hcl");
    std::fs::write(
        &path,
        "dns {\n  enabled = true\n  port    = 0\n  bind    = \"127.0.0.1\"\n}\n",
    )
    .unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_agent_answers_a_and_srv_for_healthy_instances_only() {
    let scratch = tempfile::tempdir().unwrap();
    let config = dns_config(scratch.path());
    let agent = DevAgent::start_with(&["-config", &config]);
    let dns: SocketAddr = agent
        .dns
        .as_deref()
        .expect("the banner shows the DNS address")
        .parse()
        .unwrap();
    agent.wait_ready().await;
    let down = scratch.path().join("down");
    let (steady, flaky) = (free_port(), free_port());
    agent
        .client
        .post("/v1/jobs", &demo_job(steady, flaky, &down))
        .await
        .expect(200);

    // Both instances of dnsweb become healthy: SRV lists both ports.
    let web = "dnsweb.service.dc1.caravan.";
    eventually(WAIT, "SRV answers for both dnsweb instances", || async {
        srv_ports(&ask(dns, web, RecordType::SRV, false).await) == BTreeSet::from([steady, flaky])
    })
    .await;

    for tcp in [false, true] {
        let srv = ask(dns, web, RecordType::SRV, tcp).await;
        assert_eq!(srv.response_code, ResponseCode::NoError);
        assert!(srv.authoritative, "tcp={tcp}");
        for record in &srv.answers {
            assert_eq!(record.ttl, 0);
            let RData::SRV(data) = &record.data else {
                panic!("not SRV: {record}");
            };
            assert_eq!(data.target.to_ascii(), "7f000001.addr.dc1.caravan.");
        }
        // The target's address rides along, and resolves on its own too.
        let extra: Vec<String> = srv.additionals.iter().map(|r| r.to_string()).collect();
        assert_eq!(srv.additionals.len(), 1, "{extra:?}");
        assert_eq!(
            srv.additionals[0].name.to_ascii(),
            "7f000001.addr.dc1.caravan."
        );
        assert!(matches!(&srv.additionals[0].data, RData::A(a) if a.0.is_loopback()));
        let target = ask(dns, "7f000001.addr.dc1.caravan.", RecordType::A, tcp).await;
        assert_eq!(a_addrs(&target), ["127.0.0.1"]);

        // A: both instances are on 127.0.0.1, answered once.
        let a = ask(dns, web, RecordType::A, tcp).await;
        assert_eq!(a.response_code, ResponseCode::NoError);
        assert_eq!(a_addrs(&a), ["127.0.0.1"], "tcp={tcp}");
    }

    // How fast: sequential SRV queries over one UDP socket (printed, not asserted).
    {
        let stream = UdpClientStream::builder(dns, TokioRuntimeProvider::default()).build();
        let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
        tokio::spawn(bg);
        let name = Name::from_ascii(web).unwrap();
        let mut took = Vec::new();
        for _ in 0..500 {
            let started = std::time::Instant::now();
            let resp = client
                .query(name.clone(), DNSClass::IN, RecordType::SRV)
                .await
                .unwrap();
            took.push(started.elapsed());
            assert_eq!(resp.answers.len(), 2);
        }
        took.sort();
        eprintln!(
            "dns_srv_udp_p50_us={} p99_us={}",
            took[took.len() / 2].as_micros(),
            took[took.len() * 99 / 100].as_micros()
        );
    }

    // The namespaced and RFC 2782 forms, and the agent's datacenter by default.
    for name in [
        "dnsweb.default.service.dc1.caravan.",
        "_dnsweb._tcp.service.dc1.caravan.",
        "dnsweb.service.caravan.",
        "DNSWEB.Service.DC1.Caravan.",
    ] {
        let srv = ask(dns, name, RecordType::SRV, false).await;
        assert_eq!(srv_ports(&srv), BTreeSet::from([steady, flaky]), "{name}");
    }

    // Names nobody registered, another datacenter or namespace, other domains: NXDOMAIN.
    for name in [
        "nope.service.dc1.caravan.",
        "dnsweb.service.dc9.caravan.",
        "dnsweb.ops.service.dc1.caravan.",
        "dnsweb.node.dc1.caravan.",
        "example.com.",
    ] {
        let resp = ask(dns, name, RecordType::A, false).await;
        assert_eq!(resp.response_code, ResponseCode::NXDomain, "{name}");
        assert!(resp.answers.is_empty());
    }

    // The flaky instance's check starts failing: it leaves dnsweb's answers, and dnsflaky,
    // which has no other instance, answers NOERROR with no record (not NXDOMAIN).
    std::fs::write(&down, "").unwrap();
    eventually(
        WAIT,
        "the failing instance leaves the SRV answer",
        || async {
            srv_ports(&ask(dns, web, RecordType::SRV, false).await) == BTreeSet::from([steady])
        },
    )
    .await;
    let regs = agent.client.get("/v1/service/dnsflaky").await.json();
    assert_eq!(regs[0]["Healthy"], false, "{regs}");
    for rtype in [RecordType::A, RecordType::SRV] {
        let empty = ask(dns, "dnsflaky.service.dc1.caravan.", rtype, false).await;
        assert_eq!(empty.response_code, ResponseCode::NoError);
        assert!(empty.answers.is_empty(), "{rtype}: {:?}", empty.answers);
        assert!(
            empty
                .authorities
                .iter()
                .any(|r| r.record_type() == RecordType::SOA),
            "a negative answer carries the SOA"
        );
    }

    // It passes again: back in the answers.
    std::fs::remove_file(&down).unwrap();
    eventually(WAIT, "the recovered instance is answered again", || async {
        srv_ports(&ask(dns, web, RecordType::SRV, false).await) == BTreeSet::from([steady, flaky])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_only_agent_answers_through_the_servers() {
    let scratch = tempfile::tempdir().unwrap();
    let agent = DevAgent::start();
    agent.wait_ready().await;
    let down = scratch.path().join("down");
    let (steady, flaky) = (free_port(), free_port());
    agent
        .client
        .post("/v1/jobs", &demo_job(steady, flaky, &down))
        .await
        .expect(200);
    eventually(WAIT, "both dnsweb instances healthy", || async {
        let regs = agent.client.get("/v1/service/dnsweb").await.json();
        regs.as_array()
            .is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["Healthy"] == true))
    })
    .await;

    // A second agent, client only, with DNS from the command line.
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_owned();
    let (child, banner) = spawn_agent_banner(&[
        "agent",
        "-client",
        "-servers",
        &agent.addr,
        "-bind",
        "127.0.0.1",
        "-http-port",
        "0",
        "-data-dir",
        &data_dir,
        "-node",
        "dns-client",
        "-dns-port",
        "0",
    ]);
    struct Kill(std::process::Child, std::path::PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            reap_tasks(&self.1);
        }
    }
    let _client = Kill(child, data.path().to_path_buf());
    let dns: SocketAddr = banner
        .dns
        .expect("the banner shows the DNS address")
        .parse()
        .unwrap();

    let web = "dnsweb.service.dc1.caravan.";
    let srv = ask(dns, web, RecordType::SRV, false).await;
    assert_eq!(srv_ports(&srv), BTreeSet::from([steady, flaky]));
    let a = ask(dns, web, RecordType::A, true).await;
    assert_eq!(a_addrs(&a), ["127.0.0.1"]);
    let nx = ask(dns, "nope.service.dc1.caravan.", RecordType::A, false).await;
    assert_eq!(nx.response_code, ResponseCode::NXDomain);

    // A check failure reaches it too, once its short cache expires.
    std::fs::write(&down, "").unwrap();
    eventually(WAIT, "the failing instance leaves the answer", || async {
        srv_ports(&ask(dns, web, RecordType::SRV, false).await) == BTreeSet::from([steady])
    })
    .await;
}
