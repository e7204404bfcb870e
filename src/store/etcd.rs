//! The etcd store, through `etcd-client`.
//!
//! - Transactions are checked (op count against `--max-txn-ops`, duplicate keys) before they
//!   are sent, so the error is the same as the embedded store's.
//! - Watches ask for prev values and progress notifications. When the stream breaks (connection
//!   lost, etcd restarted, leader lost) the watch is re-created from the last delivered
//!   revision + 1, with backoff, so every revision still arrives once and in order. A compacted
//!   start revision ends the stream with [`StoreError::Compacted`].
//! - Unary requests are bounded by the configured request timeout; a timeout or a transport
//!   failure is [`StoreError::Unavailable`].

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, CompactionOptions, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;

use super::embedded::lease_ttl;
use super::error::StoreError;
use super::spec::{EtcdConfig, TlsConfig};
use super::types::{
    CompareOp, CompareTarget, Event, EventKind, KeyValue, LeaseId, Op, OpResult, Range, Revision,
    StoreKind, Txn, TxnResponse,
};
use super::{Store, WatchStream, prefix_end, validate_txn};

/// Keys per page of a top-level range.
const RANGE_PAGE: i64 = 1000;
/// Bounds on the watch reconnect backoff.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A store backed by an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    cfg: EtcdConfig,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.cfg.endpoints)
            .field("tls", &self.cfg.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// What an etcd error is about, to build a precise [`StoreError`].
#[derive(Clone, Copy, Debug, Default)]
struct Ctx {
    lease: Option<LeaseId>,
    revision: Option<Revision>,
}

impl Ctx {
    fn lease(lease: LeaseId) -> Self {
        Ctx {
            lease: Some(lease),
            revision: None,
        }
    }
    fn revision(revision: Revision) -> Self {
        Ctx {
            lease: None,
            revision: Some(revision),
        }
    }
}

/// gRPC status codes (stable across gRPC implementations).
mod grpc {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const ABORTED: i32 = 10;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const UNAVAILABLE: i32 = 14;
}

/// Maps an etcd-client error. `Compacted` comes back with compact revision 0: callers that can
/// find the real one use [`EtcdStore::fill_compacted`].
fn map_err(e: etcd_client::Error, ctx: Ctx) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => {
            let msg = status.message();
            match status.code() as i32 {
                grpc::OUT_OF_RANGE if msg.contains("compacted") => StoreError::Compacted {
                    compact_revision: 0,
                },
                grpc::OUT_OF_RANGE if msg.contains("future revision") => {
                    StoreError::FutureRevision {
                        requested: ctx.revision.unwrap_or(0),
                    }
                }
                grpc::NOT_FOUND if msg.contains("lease not found") => {
                    StoreError::LeaseNotFound(ctx.lease.unwrap_or(LeaseId(0)))
                }
                grpc::INVALID_ARGUMENT
                    if msg.contains("too many operations") || msg.contains("duplicate key") =>
                {
                    StoreError::InvalidTxn(msg.to_owned())
                }
                grpc::UNAVAILABLE
                | grpc::DEADLINE_EXCEEDED
                | grpc::CANCELLED
                | grpc::ABORTED
                | grpc::RESOURCE_EXHAUSTED => StoreError::Unavailable(format!("etcd: {msg}")),
                grpc::UNKNOWN
                    if ["transport", "connect", "h2", "broken pipe"]
                        .iter()
                        .any(|m| msg.contains(m)) =>
                {
                    StoreError::Unavailable(format!("etcd: {msg}"))
                }
                _ => StoreError::Backend(format!("etcd: {:?}: {msg}", status.code())),
            }
        }
        E::TransportError(e) => StoreError::Unavailable(error_chain(&e)),
        E::IoError(e) => StoreError::Unavailable(e.to_string()),
        // etcd-client checks the first keep-alive answer itself and reports an unknown lease so.
        E::LeaseKeepAliveError(e) if e.contains("lease not found") => {
            StoreError::LeaseNotFound(ctx.lease.unwrap_or(LeaseId(0)))
        }
        E::WatchError(e) | E::LeaseKeepAliveError(e) => StoreError::Unavailable(e),
        other => StoreError::Backend(other.to_string()),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn convert_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        // Caravan only writes UTF-8 keys; a foreign key is shown lossily rather than failing a
        // whole listing.
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
    }
}

fn convert_op(op: CompareOp) -> etcd_client::CompareOp {
    match op {
        CompareOp::Equal => etcd_client::CompareOp::Equal,
        CompareOp::NotEqual => etcd_client::CompareOp::NotEqual,
        CompareOp::Less => etcd_client::CompareOp::Less,
        CompareOp::Greater => etcd_client::CompareOp::Greater,
    }
}

/// `key` and `range_end` covering every key starting with `prefix` (all keys for "").
fn prefix_bounds(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    (
        prefix.as_bytes().to_vec(),
        prefix_end(prefix.as_bytes()).unwrap_or_else(|| vec![0]),
    )
}

fn build_ops(ops: &[Op]) -> Vec<TxnOp> {
    ops.iter()
        .map(|op| match op {
            Op::Put { key, value, lease } => {
                let mut opts = PutOptions::new().with_prev_key();
                if let Some(lease) = lease {
                    opts = opts.with_lease(lease.0);
                }
                TxnOp::put(key.as_str(), value.clone(), Some(opts))
            }
            Op::Delete { key } => {
                TxnOp::delete(key.as_str(), Some(DeleteOptions::new().with_prev_key()))
            }
            Op::DeletePrefix { prefix } => {
                let (key, end) = prefix_bounds(prefix);
                TxnOp::delete(
                    key,
                    Some(DeleteOptions::new().with_range(end).with_prev_key()),
                )
            }
            Op::Get { key } => TxnOp::get(key.as_str(), None),
            Op::Range { prefix } => {
                let (key, end) = prefix_bounds(prefix);
                TxnOp::get(key, Some(GetOptions::new().with_range(end)))
            }
        })
        .collect()
}

fn first_lease(txn: &Txn) -> Option<LeaseId> {
    txn.success
        .iter()
        .chain(&txn.failure)
        .find_map(|op| match op {
            Op::Put { lease, .. } => *lease,
            _ => None,
        })
}

impl EtcdStore {
    /// Connects and checks that the cluster answers.
    pub async fn connect(cfg: &EtcdConfig) -> Result<Self, StoreError> {
        if cfg.endpoints.is_empty() {
            return Err(StoreError::Config("no etcd endpoints".to_owned()));
        }
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(cfg.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true);
        let scheme = match &cfg.tls {
            None => "http",
            Some(tls) => {
                opts = with_tls(opts, tls).await?;
                "https"
            }
        };
        let urls: Vec<String> = cfg
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let client = Client::connect(&urls, Some(opts))
            .await
            .map_err(|e| map_err(e, Ctx::default()))?;
        let store = EtcdStore {
            client,
            cfg: cfg.clone(),
        };
        store.current_revision().await.map_err(|e| match e {
            StoreError::Unavailable(msg) => {
                StoreError::Unavailable(format!("cannot reach etcd at {}: {msg}", urls.join(",")))
            }
            other => other,
        })?;
        Ok(store)
    }

    /// Bounds a unary request by the request timeout.
    async fn timed<T>(
        &self,
        ctx: Ctx,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.cfg.request_timeout, fut).await {
            Ok(result) => result.map_err(|e| map_err(e, ctx)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd request timed out after {:?}",
                self.cfg.request_timeout
            ))),
        }
    }

    /// Replaces a `Compacted { compact_revision: 0 }` with the cluster's compact revision,
    /// which etcd only reports to watchers: a watch from revision 1 is cancelled with it.
    async fn fill_compacted(&self, err: StoreError) -> StoreError {
        if err
            != (StoreError::Compacted {
                compact_revision: 0,
            })
        {
            return err;
        }
        let probe = async {
            let opts = WatchOptions::new().with_start_revision(1);
            let mut stream = self
                .client
                .watch_client()
                .watch("\0caravan/compact-probe", Some(opts))
                .await
                .ok()?;
            while let Ok(Some(resp)) = stream.message().await {
                if resp.compact_revision() > 0 {
                    return Some(resp.compact_revision());
                }
                if resp.canceled() {
                    return None;
                }
            }
            None
        };
        match tokio::time::timeout(Duration::from_secs(3), probe).await {
            Ok(Some(compact_revision)) => StoreError::Compacted { compact_revision },
            _ => err,
        }
    }
}

#[cfg(feature = "etcd-tls")]
async fn with_tls(opts: ConnectOptions, tls: &TlsConfig) -> Result<ConnectOptions, StoreError> {
    use etcd_client::{Certificate, Identity, TlsOptions};
    let mut t = TlsOptions::new();
    if let Some(ca) = &tls.ca_file {
        t = t.ca_certificate(Certificate::from_pem(read_pem(ca).await?));
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        t = t.identity(Identity::from_pem(
            read_pem(cert).await?,
            read_pem(key).await?,
        ));
    }
    if let Some(domain) = &tls.domain {
        t = t.domain_name(domain.clone());
    }
    Ok(opts.with_tls(t))
}

#[cfg(not(feature = "etcd-tls"))]
async fn with_tls(_opts: ConnectOptions, tls: &TlsConfig) -> Result<ConnectOptions, StoreError> {
    // Check the files anyway, so that a wrong path is reported as such.
    for path in [&tls.ca_file, &tls.cert_file, &tls.key_file]
        .into_iter()
        .flatten()
    {
        read_pem(path).await?;
    }
    Err(StoreError::Config(
        "TLS to etcd needs caravan built with the `etcd-tls` cargo feature".to_owned(),
    ))
}

async fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    tokio::fs::read(path)
        .await
        .map_err(|e| StoreError::Config(format!("reading {}: {e}", path.display())))
}

#[async_trait]
impl Store for EtcdStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Etcd
    }

    fn max_txn_ops(&self) -> usize {
        self.cfg.max_txn_ops
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut kv = self.client.kv_client();
        let resp = self.timed(Ctx::default(), kv.get(key, None)).await?;
        Ok(resp.kvs().first().map(convert_kv))
    }

    async fn range(&self, prefix: &str, at: Option<Revision>) -> Result<Range, StoreError> {
        if let Some(at) = at
            && at < 1
        {
            return Err(StoreError::InvalidArgument(format!(
                "range revision {at} (must be >= 1)"
            )));
        }
        let (mut key, end) = prefix_bounds(prefix);
        let mut kv = self.client.kv_client();
        let mut kvs = Vec::new();
        let mut revision = at;
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(RANGE_PAGE);
            if let Some(rev) = revision {
                opts = opts.with_revision(rev);
            }
            let ctx = Ctx {
                lease: None,
                revision: at,
            };
            let resp = match self.timed(ctx, kv.get(key.clone(), Some(opts))).await {
                Ok(resp) => resp,
                Err(e) => return Err(self.fill_compacted(e).await),
            };
            // Later pages are read at the revision of the first one: one consistent snapshot.
            let rev = *revision.get_or_insert(resp.header().map_or(0, |h| h.revision()));
            kvs.extend(resp.kvs().iter().map(convert_kv));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    key = last.key().to_vec();
                    key.push(0);
                }
                _ => {
                    return Ok(Range { kvs, revision: rev });
                }
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        validate_txn(&txn, self.cfg.max_txn_ops)?;
        let compares: Vec<etcd_client::Compare> = txn
            .compares
            .iter()
            .map(|c| {
                let key = c.key.as_str();
                let op = convert_op(c.op);
                match &c.target {
                    CompareTarget::ModRevision(r) => {
                        etcd_client::Compare::mod_revision(key, op, *r)
                    }
                    CompareTarget::CreateRevision(r) => {
                        etcd_client::Compare::create_revision(key, op, *r)
                    }
                    CompareTarget::Version(v) => etcd_client::Compare::version(key, op, *v),
                    CompareTarget::Value(v) => etcd_client::Compare::value(key, op, v.clone()),
                }
            })
            .collect();
        let request = etcd_client::Txn::new()
            .when(compares)
            .and_then(build_ops(&txn.success))
            .or_else(build_ops(&txn.failure));
        let ctx = Ctx {
            lease: first_lease(&txn),
            revision: None,
        };
        let mut kv = self.client.kv_client();
        let resp = self.timed(ctx, kv.txn(request)).await?;
        let succeeded = resp.succeeded();
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let responses = resp.op_responses();
        if responses.len() != ops.len() {
            return Err(StoreError::Backend(format!(
                "etcd answered {} results for {} operations",
                responses.len(),
                ops.len()
            )));
        }
        let mut results = Vec::with_capacity(ops.len());
        for (op, response) in ops.iter().zip(responses) {
            results.push(match (op, response) {
                (Op::Put { .. }, TxnOpResponse::Put(r)) => OpResult::Put {
                    prev: r.prev_key().map(convert_kv),
                },
                (Op::Delete { .. } | Op::DeletePrefix { .. }, TxnOpResponse::Delete(r)) => {
                    OpResult::Delete {
                        deleted: r.prev_kvs().iter().map(convert_kv).collect(),
                    }
                }
                (Op::Get { .. }, TxnOpResponse::Get(r)) => {
                    OpResult::Get(r.kvs().first().map(convert_kv))
                }
                (Op::Range { .. }, TxnOpResponse::Get(r)) => {
                    OpResult::Range(r.kvs().iter().map(convert_kv).collect())
                }
                (op, _) => {
                    return Err(StoreError::Backend(format!(
                        "etcd answered a mismatched result for {op:?}"
                    )));
                }
            });
        }
        Ok(TxnResponse {
            succeeded,
            revision: resp.header().map_or(0, |h| h.revision()),
            results,
        })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        if from < 1 {
            return Err(StoreError::InvalidArgument(format!(
                "watch revision {from} (must be >= 1)"
            )));
        }
        let mut watch = EtcdWatch {
            client: self.client.clone(),
            prefix: prefix.to_owned(),
            next: from,
            stream: None,
            backoff: WATCH_BACKOFF_MIN,
            timeout: self.cfg.request_timeout,
            done: false,
        };
        // The first attempt reports connection errors to the caller; a compacted start
        // revision is reported through the stream, as later ones are.
        match watch.open().await {
            Ok(stream) => watch.stream = Some(stream),
            Err(e @ StoreError::Compacted { .. }) => {
                return Ok(futures::stream::once(async move { Err(e) }).boxed());
            }
            Err(e) => return Err(e),
        }
        Ok(futures::stream::unfold(watch, |mut w| async move {
            let item = w.next_item().await?;
            Some((item, w))
        })
        .boxed())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = i64::try_from(lease_ttl(ttl).as_secs()).unwrap_or(i64::MAX);
        let mut lease = self.client.lease_client();
        let resp = self.timed(Ctx::default(), lease.grant(secs, None)).await?;
        if !resp.error().is_empty() {
            return Err(StoreError::Backend(format!(
                "etcd lease grant: {}",
                resp.error()
            )));
        }
        Ok(LeaseId(resp.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let mut client = self.client.lease_client();
        let ttl = self
            .timed(Ctx::lease(lease), async {
                let (mut keeper, mut stream) = client.keep_alive(lease.0).await?;
                keeper.keep_alive().await?;
                Ok(stream.message().await?.map_or(0, |r| r.ttl()))
            })
            .await?;
        if ttl <= 0 {
            return Err(StoreError::LeaseNotFound(lease));
        }
        Ok(Duration::from_secs(ttl.unsigned_abs()))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut client = self.client.lease_client();
        self.timed(Ctx::lease(lease), client.revoke(lease.0))
            .await?;
        Ok(())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        let opts = CompactionOptions::new().with_physical();
        match self
            .timed(Ctx::revision(revision), kv.compact(revision, Some(opts)))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fill_compacted(e).await),
        }
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let mut kv = self.client.kv_client();
        let opts = GetOptions::new().with_count_only();
        let resp = self.timed(Ctx::default(), kv.get("\0", Some(opts))).await?;
        resp.header()
            .map(|h| h.revision())
            .ok_or_else(|| StoreError::Backend("etcd response without header".to_owned()))
    }
}

/// A watch that survives broken streams by resuming from the next undelivered revision.
struct EtcdWatch {
    client: Client,
    prefix: String,
    /// The next revision to deliver.
    next: Revision,
    stream: Option<etcd_client::WatchStream>,
    backoff: Duration,
    timeout: Duration,
    done: bool,
}

impl EtcdWatch {
    /// Creates the server-side watch from `next` and waits for etcd to confirm it.
    async fn open(&mut self) -> Result<etcd_client::WatchStream, StoreError> {
        let (key, end) = prefix_bounds(&self.prefix);
        let opts = WatchOptions::new()
            .with_range(end)
            .with_start_revision(self.next)
            .with_prev_key()
            .with_progress_notify();
        let mut client = self.client.watch_client();
        let setup = async {
            let mut stream = client.watch(key, Some(opts)).await?;
            let first = stream.message().await?;
            Ok((stream, first))
        };
        let (stream, first) = match tokio::time::timeout(self.timeout, setup).await {
            Ok(result) => result.map_err(|e| map_err(e, Ctx::default()))?,
            Err(_) => {
                return Err(StoreError::Unavailable(
                    "etcd watch creation timed out".to_owned(),
                ));
            }
        };
        match first {
            Some(resp) if resp.compact_revision() > 0 => Err(StoreError::Compacted {
                compact_revision: resp.compact_revision(),
            }),
            Some(resp) if resp.canceled() => Err(StoreError::Backend(format!(
                "etcd refused the watch: {}",
                resp.cancel_reason()
            ))),
            Some(resp) if resp.created() => Ok(stream),
            Some(_) => Err(StoreError::Backend(
                "etcd watch: unexpected first response".to_owned(),
            )),
            None => Err(StoreError::Unavailable(
                "etcd closed the watch stream".to_owned(),
            )),
        }
    }

    fn fail(&mut self, err: StoreError) -> Option<Result<Vec<Event>, StoreError>> {
        self.done = true;
        Some(Err(err))
    }

    async fn next_item(&mut self) -> Option<Result<Vec<Event>, StoreError>> {
        loop {
            if self.done {
                return None;
            }
            let Some(stream) = self.stream.as_mut() else {
                match self.open().await {
                    Ok(stream) => {
                        tracing::info!(prefix = %self.prefix, from = self.next, "etcd watch resumed");
                        self.stream = Some(stream);
                        self.backoff = WATCH_BACKOFF_MIN;
                    }
                    Err(e @ StoreError::Compacted { .. }) => return self.fail(e),
                    Err(e) => {
                        tracing::debug!(error = %e, backoff = ?self.backoff, "etcd watch: reconnect failed");
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(WATCH_BACKOFF_MAX);
                    }
                }
                continue;
            };
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    tracing::warn!(prefix = %self.prefix, next = self.next, "etcd watch stream ended; resuming");
                    self.stream = None;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(prefix = %self.prefix, next = self.next, error = %e, "etcd watch stream broke; resuming");
                    self.stream = None;
                    continue;
                }
            };
            if resp.compact_revision() > 0 {
                return self.fail(StoreError::Compacted {
                    compact_revision: resp.compact_revision(),
                });
            }
            if resp.canceled() {
                // Cancelled by the server for another reason (e.g. leader lost): resume.
                tracing::warn!(
                    reason = resp.cancel_reason(),
                    "etcd cancelled the watch; resuming"
                );
                self.stream = None;
                continue;
            }
            let mut events = Vec::with_capacity(resp.events().len());
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                if kv.mod_revision() < self.next {
                    continue;
                }
                events.push(Event {
                    kind: match ev.event_type() {
                        EventType::Put => EventKind::Put,
                        EventType::Delete => EventKind::Delete,
                    },
                    kv: convert_kv(kv),
                    prev: ev.prev_kv().map(convert_kv),
                });
            }
            if let Some(last) = events.last() {
                self.next = last.kv.mod_revision + 1;
                return Some(Ok(events));
            }
            if resp.events().is_empty() && !resp.created() {
                // A progress notification: every event up to the header revision was sent.
                if let Some(h) = resp.header() {
                    self.next = self.next.max(h.revision() + 1);
                }
            }
        }
    }
}
