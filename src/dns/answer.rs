//! The pure half of the DNS interface: which name a query asks about, and the records that
//! answer it from a list of service registrations. No I/O; the server in `super` feeds it.
//!
//! Names, under the configured domain (`caravan`):
//!
//! | name | meaning |
//! |---|---|
//! | `<service>.service.<dc>.caravan` | service in the `default` namespace, datacenter `<dc>` |
//! | `<service>.<namespace>.service.<dc>.caravan` | service in `<namespace>` |
//! | `_<service>._tcp.service.<dc>.caravan` | RFC 2782 form of the first (`_udp` too) |
//! | `<service>.service.caravan`, `<service>.<namespace>.service.caravan` | the agent's datacenter |
//! | `<hex ip>.addr.<dc>.caravan` | an address: 8 hex digits (A) or 32 (AAAA), SRV targets |

use caravan_schemas::service::ServiceRegistration;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What the server answers for: the domain, the agent's datacenter, the TTL.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Fully qualified, lowercase (`caravan.`).
    pub domain: Name,
    /// The agent's datacenter, for names without one.
    pub datacenter: String,
    /// TTL of every record, and the SOA's negative-caching minimum.
    pub ttl: u32,
}

/// Why a zone could not be built.
#[derive(Debug, thiserror::Error)]
#[error("dns domain {domain:?} is not a valid DNS name: {message}")]
pub struct ZoneError {
    domain: String,
    message: String,
}

impl Zone {
    pub fn new(domain: &str, datacenter: &str, ttl: u32) -> Result<Zone, ZoneError> {
        let trimmed = domain.trim().trim_end_matches('.');
        let fail = |message: String| ZoneError {
            domain: domain.to_owned(),
            message,
        };
        if trimmed.is_empty() {
            return Err(fail("it is empty".into()));
        }
        let mut name =
            Name::from_ascii(trimmed.to_ascii_lowercase()).map_err(|e| fail(e.to_string()))?;
        name.set_fqdn(true);
        Ok(Zone {
            domain: name,
            datacenter: datacenter.to_ascii_lowercase(),
            ttl,
        })
    }

    /// The SOA record of the zone, sent in the authority section of negative answers.
    pub fn soa(&self) -> Record {
        let host = |label: &str| {
            Name::from_ascii(label)
                .and_then(|l| l.append_domain(&self.domain))
                .unwrap_or_else(|_| self.domain.clone())
        };
        Record::from_rdata(
            self.domain.clone(),
            self.ttl,
            RData::SOA(SOA::new(
                host("ns"),
                host("hostmaster"),
                1,
                3600,
                600,
                86400,
                self.ttl,
            )),
        )
    }

    /// `<hex ip>.addr.<dc>.<domain>`: the host name an SRV answer points at.
    pub fn addr_name(&self, ip: IpAddr, dc: &str) -> Option<Name> {
        let hex = match ip {
            IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
            IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
        };
        Name::from_ascii(format!("{hex}.addr.{}", dc.to_ascii_lowercase()))
            .and_then(|n| n.append_domain(&self.domain))
            .ok()
    }

    /// What `name` asks about.
    pub fn parse(&self, name: &Name) -> Lookup {
        if !self.domain.zone_of(name) {
            return Lookup::Elsewhere;
        }
        let own = usize::from(name.num_labels());
        let zone = usize::from(self.domain.num_labels());
        let mut labels = Vec::with_capacity(own - zone);
        for label in name.iter().take(own - zone) {
            match std::str::from_utf8(label) {
                Ok(l) => labels.push(l.to_ascii_lowercase()),
                Err(_) => return Lookup::Unknown,
            }
        }
        let local = || self.datacenter.clone();
        let service = |name: &str, namespace: &str, dc: String| Lookup::Service {
            name: name.trim_start_matches('_').to_owned(),
            namespace: namespace.to_owned(),
            datacenter: dc,
        };
        match labels.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            [] | [_] => Lookup::Apex,
            [name, "service"] => service(name, "default", local()),
            [name, "service", dc] => service(name, "default", dc.to_owned()),
            [name, "_tcp" | "_udp", "service"] if name.starts_with('_') => {
                service(name, "default", local())
            }
            [name, "_tcp" | "_udp", "service", dc] if name.starts_with('_') => {
                service(name, "default", dc.to_owned())
            }
            [name, ns, "service"] => service(name, ns, local()),
            [name, ns, "service", dc] => service(name, ns, dc.to_owned()),
            [hex, "addr", dc] => match parse_hex_ip(hex) {
                Some(ip) => Lookup::Addr {
                    ip,
                    datacenter: dc.to_owned(),
                },
                None => Lookup::Unknown,
            },
            _ => Lookup::Unknown,
        }
    }
}

/// What a query name means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A service's instances.
    Service {
        name: String,
        namespace: String,
        datacenter: String,
    },
    /// An address encoded in the name (SRV targets).
    Addr { ip: IpAddr, datacenter: String },
    /// The domain itself or a datacenter under it: exists, holds only the SOA.
    Apex,
    /// Under the domain, but no name Caravan gives out.
    Unknown,
    /// Not under the domain.
    Elsewhere,
}

fn parse_hex_ip(hex: &str) -> Option<IpAddr> {
    match hex.len() {
        8 => u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        32 => u128::from_str_radix(hex, 16)
            .ok()
            .map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        _ => None,
    }
}

/// A response's code and sections.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
    /// Negative answers (NXDOMAIN, or NOERROR with no record) carry the zone's SOA.
    pub soa: Option<Record>,
    /// The name is under the domain: the answer is authoritative.
    pub authoritative: bool,
}

impl Answer {
    fn nxdomain(zone: Option<&Zone>) -> Answer {
        Answer {
            code: ResponseCode::NXDomain,
            soa: zone.map(Zone::soa),
            authoritative: zone.is_some(),
            ..Answer::default()
        }
    }

    fn nodata(zone: &Zone) -> Answer {
        Answer {
            soa: Some(zone.soa()),
            authoritative: true,
            ..Answer::default()
        }
    }

    fn records(zone: &Zone, answers: Vec<Record>, additionals: Vec<Record>) -> Answer {
        if answers.is_empty() {
            return Answer::nodata(zone);
        }
        Answer {
            answers,
            additionals,
            authoritative: true,
            ..Answer::default()
        }
    }
}

/// The A or AAAA record for `ip` at `owner`, if `qtype` asks for that family.
fn address_record(owner: &Name, ip: IpAddr, qtype: RecordType, ttl: u32) -> Option<Record> {
    let any = qtype == RecordType::ANY;
    match ip {
        IpAddr::V4(v4) if any || qtype == RecordType::A => {
            Some(Record::from_rdata(owner.clone(), ttl, RData::A(A(v4))))
        }
        IpAddr::V6(v6) if any || qtype == RecordType::AAAA => Some(Record::from_rdata(
            owner.clone(),
            ttl,
            RData::AAAA(AAAA(v6)),
        )),
        _ => None,
    }
}

/// Answers a query that needs no registration (`Lookup::Addr`, `Apex`, `Unknown`,
/// `Elsewhere`); `None` for `Lookup::Service`.
pub fn answer_static(
    zone: &Zone,
    lookup: &Lookup,
    qname: &Name,
    qtype: RecordType,
) -> Option<Answer> {
    Some(match lookup {
        Lookup::Service { .. } => return None,
        Lookup::Elsewhere => Answer::nxdomain(None),
        Lookup::Unknown => Answer::nxdomain(Some(zone)),
        Lookup::Apex if qtype == RecordType::SOA && qname == &zone.domain => {
            Answer::records(zone, vec![zone.soa()], Vec::new())
        }
        Lookup::Apex => Answer::nodata(zone),
        Lookup::Addr { ip, .. } => Answer::records(
            zone,
            address_record(qname, *ip, qtype, zone.ttl)
                .into_iter()
                .collect(),
            Vec::new(),
        ),
    })
}

/// Answers a service query from the registrations of that service name and namespace (any
/// datacenter; the query's is picked here). Only `Healthy == Some(true)` instances are
/// answered. NXDOMAIN when no instance is registered in the datacenter, NOERROR with no
/// record when some are but none is healthy (or none has an address of the asked family).
///
/// A/AAAA: one record per distinct IP. SRV: one record per instance (priority 1, weight 1,
/// its port), target `<hex ip>.addr.<dc>.<domain>` with the address in the additional section
/// (or the registration's host name as target when its address is not an IP). `rotate` turns
/// the answer order so that resolvers taking the first record spread over instances.
pub fn answer_service(
    zone: &Zone,
    datacenter: &str,
    qname: &Name,
    qtype: RecordType,
    registrations: &[ServiceRegistration],
    rotate: usize,
) -> Answer {
    let mut in_dc = registrations
        .iter()
        .filter(|r| r.datacenter.eq_ignore_ascii_case(datacenter))
        .peekable();
    if in_dc.peek().is_none() {
        return Answer::nxdomain(Some(zone));
    }
    let healthy: Vec<&ServiceRegistration> = in_dc.filter(|r| r.healthy == Some(true)).collect();
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    match qtype {
        RecordType::SRV => {
            for reg in &healthy {
                let Ok(port) = u16::try_from(reg.port) else {
                    continue;
                };
                let (target, extra) = match reg.address.parse::<IpAddr>() {
                    Ok(ip) => {
                        let Some(target) = zone.addr_name(ip, datacenter) else {
                            continue;
                        };
                        let extra = address_record(&target, ip, RecordType::ANY, zone.ttl);
                        (target, extra)
                    }
                    Err(_) => match Name::from_ascii(&reg.address) {
                        Ok(mut host) if !reg.address.is_empty() => {
                            host.set_fqdn(true);
                            (host, None)
                        }
                        _ => continue,
                    },
                };
                answers.push(Record::from_rdata(
                    qname.clone(),
                    zone.ttl,
                    RData::SRV(SRV::new(1, 1, port, target)),
                ));
                if let Some(extra) = extra
                    && !additionals.contains(&extra)
                {
                    additionals.push(extra);
                }
            }
        }
        _ => {
            for reg in &healthy {
                let Ok(ip) = reg.address.parse::<IpAddr>() else {
                    continue;
                };
                if let Some(record) = address_record(qname, ip, qtype, zone.ttl)
                    && !answers.contains(&record)
                {
                    answers.push(record);
                }
            }
        }
    }
    if !answers.is_empty() {
        let by = rotate % answers.len();
        answers.rotate_left(by);
    }
    Answer::records(zone, answers, additionals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::ids::AllocId;

    fn zone() -> Zone {
        Zone::new("caravan", "dc1", 0).unwrap()
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn reg(
        alloc: &str,
        dc: &str,
        address: &str,
        port: i32,
        healthy: Option<bool>,
    ) -> ServiceRegistration {
        ServiceRegistration {
            service_name: "web".into(),
            alloc_id: AllocId::new(alloc),
            datacenter: dc.into(),
            address: address.into(),
            port,
            healthy,
            ..ServiceRegistration::default()
        }
    }

    fn service(name: &str, ns: &str, dc: &str) -> Lookup {
        Lookup::Service {
            name: name.into(),
            namespace: ns.into(),
            datacenter: dc.into(),
        }
    }

    #[test]
    fn names_parse_into_lookups() {
        let z = zone();
        let cases = [
            ("web.service.dc1.caravan.", service("web", "default", "dc1")),
            ("WEB.Service.DC2.Caravan.", service("web", "default", "dc2")),
            ("web.ops.service.dc1.caravan.", service("web", "ops", "dc1")),
            ("web.service.caravan.", service("web", "default", "dc1")),
            ("web.ops.service.caravan.", service("web", "ops", "dc1")),
            (
                "_web._tcp.service.dc1.caravan.",
                service("web", "default", "dc1"),
            ),
            (
                "_web._udp.service.caravan.",
                service("web", "default", "dc1"),
            ),
            (
                "7f000001.addr.dc1.caravan.",
                Lookup::Addr {
                    ip: "127.0.0.1".parse().unwrap(),
                    datacenter: "dc1".into(),
                },
            ),
            (
                "fd000000000000000000000000000001.addr.dc1.caravan.",
                Lookup::Addr {
                    ip: "fd00::1".parse().unwrap(),
                    datacenter: "dc1".into(),
                },
            ),
            ("caravan.", Lookup::Apex),
            ("dc1.caravan.", Lookup::Apex),
            ("xyz.addr.dc1.caravan.", Lookup::Unknown),
            ("a.b.c.d.e.caravan.", Lookup::Unknown),
            ("web.node.dc1.caravan.", Lookup::Unknown),
            ("web.service.dc1.consul.", Lookup::Elsewhere),
            ("example.com.", Lookup::Elsewhere),
        ];
        for (text, want) in cases {
            assert_eq!(z.parse(&name(text)), want, "{text}");
        }
        let deep = Zone::new("svc.example.", "dc1", 0).unwrap();
        assert_eq!(
            deep.parse(&name("web.service.dc1.svc.example.")),
            service("web", "default", "dc1")
        );
        assert!(Zone::new("", "dc1", 0).is_err());
        assert!(Zone::new("a..b", "dc1", 0).is_err());
    }

    #[test]
    fn a_answers_list_healthy_instances_of_the_datacenter_once_per_address() {
        let z = zone();
        let q = name("web.service.dc1.caravan.");
        let regs = [
            reg("a1", "dc1", "10.0.0.1", 20001, Some(true)),
            reg("a2", "dc1", "10.0.0.2", 20002, Some(true)),
            reg("a3", "dc1", "10.0.0.1", 20003, Some(true)),
            reg("a4", "dc1", "10.0.0.4", 20004, Some(false)),
            reg("a5", "dc1", "10.0.0.5", 20005, None),
            reg("a6", "dc2", "10.0.0.6", 20006, Some(true)),
            reg("a7", "dc1", "fd00::7", 20007, Some(true)),
        ];
        let ips =
            |a: &Answer| -> Vec<String> { a.answers.iter().map(|r| r.data.to_string()).collect() };
        let a = answer_service(&z, "dc1", &q, RecordType::A, &regs, 0);
        assert_eq!(a.code, ResponseCode::NoError);
        assert!(a.authoritative);
        assert_eq!(ips(&a), ["10.0.0.1", "10.0.0.2"]);
        let rotated = answer_service(&z, "dc1", &q, RecordType::A, &regs, 1);
        assert_eq!(ips(&rotated), ["10.0.0.2", "10.0.0.1"]);
        let aaaa = answer_service(&z, "dc1", &q, RecordType::AAAA, &regs, 0);
        assert_eq!(ips(&aaaa), ["fd00::7"]);
        let dc2 = answer_service(&z, "dc2", &q, RecordType::A, &regs, 0);
        assert_eq!(ips(&dc2), ["10.0.0.6"]);
    }

    #[test]
    fn srv_answers_point_at_addr_names_with_the_addresses_additional() {
        let z = zone();
        let q = name("web.service.dc1.caravan.");
        let regs = [
            reg("a1", "dc1", "127.0.0.1", 20001, Some(true)),
            reg("a2", "dc1", "127.0.0.1", 20002, Some(true)),
            reg("a3", "dc1", "db.example.com", 5432, Some(true)),
            reg("a4", "dc1", "127.0.0.1", 70000, Some(true)),
        ];
        let a = answer_service(&z, "dc1", &q, RecordType::SRV, &regs, 0);
        let srv: Vec<String> = a.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(
            srv,
            [
                "1 1 20001 7f000001.addr.dc1.caravan.",
                "1 1 20002 7f000001.addr.dc1.caravan.",
                "1 1 5432 db.example.com.",
            ]
        );
        assert_eq!(a.additionals.len(), 1, "one A record per distinct target");
        assert_eq!(a.additionals[0].name, name("7f000001.addr.dc1.caravan."));
        assert_eq!(a.additionals[0].data.to_string(), "127.0.0.1");
        // The target resolves on its own, too.
        let target = name("7f000001.addr.dc1.caravan.");
        let lookup = z.parse(&target);
        let t = answer_static(&z, &lookup, &target, RecordType::A).unwrap();
        assert_eq!(t.answers[0].data.to_string(), "127.0.0.1");
    }

    #[test]
    fn unknown_names_are_nxdomain_and_unhealthy_services_empty() {
        let z = zone();
        let q = name("web.service.dc1.caravan.");
        let none = answer_service(&z, "dc1", &q, RecordType::A, &[], 0);
        assert_eq!(none.code, ResponseCode::NXDomain);
        assert!(none.soa.is_some());
        let other_dc = [reg("a1", "dc2", "10.0.0.1", 1, Some(true))];
        let a = answer_service(&z, "dc1", &q, RecordType::A, &other_dc, 0);
        assert_eq!(a.code, ResponseCode::NXDomain);
        let sick = [
            reg("a1", "dc1", "10.0.0.1", 1, Some(false)),
            reg("a2", "dc1", "10.0.0.2", 1, None),
        ];
        for qtype in [RecordType::A, RecordType::SRV] {
            let a = answer_service(&z, "dc1", &q, qtype, &sick, 0);
            assert_eq!(a.code, ResponseCode::NoError);
            assert!(a.answers.is_empty());
            assert!(a.soa.is_some(), "a negative answer carries the SOA");
        }
        let elsewhere = name("example.com.");
        let e = answer_static(&z, &z.parse(&elsewhere), &elsewhere, RecordType::A).unwrap();
        assert_eq!(e.code, ResponseCode::NXDomain);
        assert!(!e.authoritative && e.soa.is_none());
        let unknown = name("web.node.dc1.caravan.");
        let u = answer_static(&z, &z.parse(&unknown), &unknown, RecordType::A).unwrap();
        assert_eq!(u.code, ResponseCode::NXDomain);
        let apex = name("caravan.");
        let soa = answer_static(&z, &z.parse(&apex), &apex, RecordType::SOA).unwrap();
        assert_eq!(soa.answers.len(), 1);
        let addr = name("7f000001.addr.dc1.caravan.");
        let v6 = answer_static(&z, &z.parse(&addr), &addr, RecordType::AAAA).unwrap();
        assert!(v6.answers.is_empty() && v6.code == ResponseCode::NoError);
    }
}
