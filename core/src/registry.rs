//! The client registry: every registered client, its metadata, and the indexes that let a
//! selective query touch only a few candidates instead of every client of an application.
//!
//! Indexes are per application and per top-level metadata key. They answer "which clients
//! could satisfy this comparison" with a *superset* of the true answer; the full query is then
//! evaluated on each candidate. So the index can never change a result, only its cost, and the
//! differential tests compare it against [`Registry::match_set_scan`], a plain full scan.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::Fatal;
use crate::frame::Out;
use crate::metadata::{MetaType, Metadata, Update, UpdateStrategy, reserved};
use crate::query::{AppFilter, CmpOp, Cond, Operand, Query, rendezvous, select};
use crate::semver::Version;
use crate::session::{ConnId, Outbox};
use crate::value::{Num, Value};

/// A client's place in the registry.
pub type Slot = u32;

type SlotSet = HashSet<Slot>;

/// A registered client.
pub struct ClientRecord {
    pub application_id: String,
    pub client_id: String,
    /// The node holding the connection (SPEC §9.4 `node`).
    pub node: Arc<str>,
    pub restricted: bool,
    pub receive_client_updates: bool,
    /// The identify `ip` or formatted peer address; null for restricted clients.
    pub socket_ip: Option<String>,
    /// The address the proxy uses (SPEC §9.7): `socket_ip`, or the peer address when null.
    pub proxy_address: Option<String>,
    pub metadata: Metadata,
    pub outbox: Arc<dyn Outbox>,
    /// The connection that owns the registration; cleanup of another connection never
    /// removes it.
    pub conn_id: ConnId,
}

impl ClientRecord {
    /// The client object of SPEC §9.4 (QUERY_NODES `nodes`, `POST /api/v1/query`), with the
    /// queues the client waits on, in request order.
    pub fn client_object(&self, queues: &[String]) -> Out {
        Out::Map(vec![
            ("app_id", Out::str(self.application_id.clone())),
            ("client_id", Out::str(self.client_id.clone())),
            (
                "metadata",
                Out::Value(Value::Object(self.metadata.values())),
            ),
            (
                "metadata_types",
                Out::Value(Value::Object(self.metadata.types())),
            ),
            ("socket_ip", Out::opt_str(self.socket_ip.clone())),
            (
                "queues",
                Out::List(queues.iter().map(|q| Out::str(q.clone())).collect()),
            ),
            ("node", Out::str(self.node.to_string())),
        ])
    }

    /// Whether the query's `application` and `restricted` filters admit this client.
    fn admitted_by(&self, q: &Query) -> bool {
        (q.restricted || !self.restricted)
            && match &q.application {
                AppFilter::Any => true,
                AppFilter::Exact(app) => *app == self.application_id,
                AppFilter::Nothing => false,
            }
    }
}

/// How many recipients an operation wants (SPEC §6.8 step 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipients {
    /// SEND and the proxy: exactly one.
    One,
    /// BROADCAST, QUERY_NODES, HTTP query: all, or one when a selector was given.
    All,
}

/// Every registered client of this node (and, later, the cluster's view of the others).
pub struct Registry {
    node: Arc<str>,
    slots: Vec<Option<ClientRecord>>,
    free: Vec<Slot>,
    /// `application_id \0 client_id` → slot: the uniqueness check of SPEC §4.3.
    identities: HashMap<String, Slot>,
    apps: HashMap<String, AppIndex>,
    /// Clients that receive CLIENT_CONNECTED/CLIENT_DISCONNECTED (SPEC §7.7).
    subscribers: BTreeSet<Slot>,
    /// Changes whenever a match set could change (a client registered or left, metadata
    /// changed, a heartbeat): a [`MatchCache`] filled at this generation is still exact.
    /// Unique across registries, so a cache can never mistake one registry for another.
    generation: u64,
}

/// Registry generations, shared by every registry of the process.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed)
}

/// One connection's last match set. Senders address the same target again and again, and as
/// long as nothing in the registry changed, the match set is the same: the cache hands it back
/// instead of consulting the indexes and evaluating the query on every candidate again.
///
/// Only that connection's frames use it, one at a time, so the lock is never contended.
#[derive(Default)]
pub struct MatchCache {
    last: Mutex<LastMatch>,
}

impl std::fmt::Debug for MatchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatchCache").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct LastMatch {
    /// The registry generation `slots` was computed at; 0 is never a generation.
    generation: u64,
    /// The query, by identity: the connection's [`QueryCache`](crate::query::cache::QueryCache)
    /// hands out the same `Arc` for a repeated target. Holding it keeps its address from
    /// being reused by another query.
    query: Option<Arc<Query>>,
    slots: Vec<Slot>,
}

/// Match sets larger than this are not kept: routing to them costs far more than finding
/// them, and a connection that broadcast once to many should not hold the list for its life.
const MAX_CACHED_MATCHES: usize = 1024;

/// The clients of one application and their per-key indexes.
#[derive(Default)]
struct AppIndex {
    members: SlotSet,
    keys: HashMap<String, KeyIndex>,
}

/// The values of one top-level key across the clients of one application.
///
/// Each client's value sits in exactly one of the value buckets, so buckets never overlap.
#[derive(Default)]
struct KeyIndex {
    nums: BTreeMap<Num, SlotSet>,
    /// Strings that are not version-typed, in byte order.
    strs: BTreeMap<String, SlotSet>,
    /// Version-typed strings (always valid SemVer), in precedence order.
    versions: BTreeMap<Version, SlotSet>,
    bools: [SlotSet; 2],
    nulls: SlotSet,
    /// Arrays and objects: equality against them is checked by evaluation.
    composites: SlotSet,
    /// Scalar elements of array values, for `$contains`.
    elements: HashMap<Scalar, SlotSet>,
    /// Arrays that hold an array or object element.
    composite_elements: SlotSet,
}

/// A scalar as a hash key; numbers hash by value (`10` and `10.0` are one key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Scalar {
    Null,
    Bool(bool),
    Num(Num),
    Str(String),
}

impl Scalar {
    fn of(value: &Value) -> Option<Scalar> {
        Some(match value {
            Value::Null => Scalar::Null,
            Value::Bool(b) => Scalar::Bool(*b),
            Value::String(s) => Scalar::Str(s.clone()),
            Value::Array(_) | Value::Object(_) => return None,
            number => Scalar::Num(number.as_num()?),
        })
    }
}

/// Candidate sets for a condition: `None` means "every member"; otherwise the union of the
/// listed sets is a superset of the clients that can satisfy it.
type Plan<'a> = Option<Vec<&'a SlotSet>>;

fn plan_size(plan: &Plan<'_>) -> usize {
    plan.as_ref()
        .map_or(usize::MAX, |sets| sets.iter().map(|s| s.len()).sum())
}

// === impl Registry ===

impl Registry {
    pub fn new(node: impl Into<Arc<str>>) -> Registry {
        Registry {
            node: node.into(),
            slots: Vec::new(),
            free: Vec::new(),
            identities: HashMap::new(),
            apps: HashMap::new(),
            subscribers: BTreeSet::new(),
            generation: next_generation(),
        }
    }

    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    /// Number of registered clients.
    pub fn len(&self) -> usize {
        self.identities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    pub fn get(&self, slot: Slot) -> Option<&ClientRecord> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// Whether an identity is registered.
    pub fn contains(&self, application_id: &str, client_id: &str) -> bool {
        self.identities
            .contains_key(&identity_key(application_id, client_id))
    }

    /// Registers a client, atomically with the uniqueness check. `before_insert` runs after the
    /// check passes and before anyone can route to the client: the router queues `ready` there.
    pub fn register(
        &mut self,
        record: ClientRecord,
        before_insert: impl FnOnce(&ClientRecord),
    ) -> Result<Slot, Fatal> {
        let key = identity_key(&record.application_id, &record.client_id);
        if self.identities.contains_key(&key) {
            return Err(Fatal::AlreadyRegistered {
                client_id: record.client_id,
                application_id: record.application_id,
            });
        }
        before_insert(&record);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = Slot::try_from(self.slots.len()).map_err(|_| Fatal::Internal)?;
                self.slots.push(None);
                slot
            }
        };
        self.identities.insert(key, slot);
        if record.receive_client_updates && !record.restricted {
            self.subscribers.insert(slot);
        }
        let app = self.apps.entry(record.application_id.clone()).or_default();
        app.members.insert(slot);
        for (key, entry) in record.metadata.iter() {
            app.index(slot, key, &entry.value, entry.ty, true);
        }
        self.slots[slot as usize] = Some(record);
        self.generation = next_generation();
        Ok(slot)
    }

    /// Removes a registration, if `slot` still belongs to connection `conn_id`.
    pub fn unregister(&mut self, slot: Slot, conn_id: ConnId) -> Option<ClientRecord> {
        if self.get(slot)?.conn_id != conn_id {
            return None;
        }
        let record = self.slots[slot as usize].take()?;
        self.generation = next_generation();
        self.free.push(slot);
        self.identities
            .remove(&identity_key(&record.application_id, &record.client_id));
        self.subscribers.remove(&slot);
        if let Some(app) = self.apps.get_mut(&record.application_id) {
            for (key, entry) in record.metadata.iter() {
                app.index(slot, key, &entry.value, entry.ty, false);
            }
            app.members.remove(&slot);
            if app.members.is_empty() {
                self.apps.remove(&record.application_id);
            }
        }
        Some(record)
    }

    /// Validates and applies an `UPDATE_METADATA`, keeping the indexes in step.
    pub fn update_metadata(
        &mut self,
        slot: Slot,
        prepare: impl FnOnce(&Metadata) -> Result<Update, crate::error::KeyErrors>,
    ) -> Result<(), crate::error::KeyErrors> {
        let Some(record) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return Ok(());
        };
        let update = prepare(&record.metadata)?;
        let mut keys: Vec<String> = update.keys().map(str::to_owned).collect();
        if update.strategy() == UpdateStrategy::Replace {
            keys.extend(
                record
                    .metadata
                    .iter()
                    .filter(|(k, _)| !reserved::contains(k))
                    .map(|(k, _)| k.to_owned()),
            );
        }
        let Some(app) = self.apps.get_mut(&record.application_id) else {
            return Ok(());
        };
        app.reindex(slot, &keys, &record.metadata, false);
        record.metadata.apply(update);
        app.reindex(slot, &keys, &record.metadata, true);
        self.generation = next_generation();
        Ok(())
    }

    /// Sets `last_heartbeat_time` (SPEC §4.6).
    pub fn heartbeat(&mut self, slot: Slot, now_ms: u64) {
        let Some(record) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        let Some(app) = self.apps.get_mut(&record.application_id) else {
            return;
        };
        let keys = [reserved::LAST_HEARTBEAT_TIME.to_owned()];
        app.reindex(slot, &keys, &record.metadata, false);
        record
            .metadata
            .set_reserved(reserved::LAST_HEARTBEAT_TIME, Value::from(now_ms));
        app.reindex(slot, &keys, &record.metadata, true);
        self.generation = next_generation();
    }

    /// Whether the client at `slot`, still owned by connection `conn`, matches `q` by SPEC §6.8
    /// steps 2–4 (queue dispatch: no selector, no fallback).
    pub fn is_conn_matching(&self, slot: Slot, conn: ConnId, q: &Query) -> bool {
        self.get(slot)
            .is_some_and(|r| r.conn_id == conn && r.admitted_by(q) && q.matches(&r.metadata))
    }

    /// Whether any client matches `q` by SPEC §6.8 steps 1–4.
    pub fn any_match(&self, q: &Query) -> bool {
        self.apps_for(q).any(|app| {
            self.candidates(app, q).any(|slot| {
                self.get(slot)
                    .is_some_and(|r| r.admitted_by(q) && q.matches(&r.metadata))
            })
        })
    }

    /// The subscribers' records, for CLIENT_* events.
    pub fn subscribers(&self) -> impl Iterator<Item = &ClientRecord> {
        self.subscribers.iter().filter_map(|s| self.get(*s))
    }

    /// Steps 1–6 of SPEC §6.8: the match set, after `optional` and the selector.
    pub fn match_set(&self, q: &Query) -> Vec<Slot> {
        self.match_set_with(q, |app| self.candidates(app, q), |_| true)
    }

    /// [`Registry::match_set`] over the clients `eligible` admits only, as if no other client
    /// were registered: the proxy's candidates are the clients with an address (SPEC §9.5), so
    /// neither `optional` nor a selector can settle on one it cannot reach.
    pub fn match_set_where(
        &self,
        q: &Query,
        eligible: impl Fn(&ClientRecord) -> bool,
    ) -> Vec<Slot> {
        self.match_set_with(q, |app| self.candidates(app, q), eligible)
    }

    /// The same as [`Registry::match_set`] without indexes: every client is evaluated. For
    /// differential tests and benchmarks.
    pub fn match_set_scan(&self, q: &Query) -> Vec<Slot> {
        self.match_set_with(q, |app| Candidates::Set(app.members.iter()), |_| true)
    }

    fn match_set_with<'a>(
        &'a self,
        q: &Query,
        candidates: impl Fn(&'a AppIndex) -> Candidates<'a>,
        eligible: impl Fn(&ClientRecord) -> bool,
    ) -> Vec<Slot> {
        let mut matched = Vec::new();
        self.match_set_into(q, candidates, eligible, &mut matched);
        matched
    }

    /// [`Registry::match_set`] through a connection's [`MatchCache`]: `then` sees the same
    /// slots, in the same order, as a fresh match set would hold (the differential test checks
    /// it), computed again only when the query or the registry changed since the last call.
    pub fn match_set_cached<R>(
        &self,
        q: &Arc<Query>,
        cache: &MatchCache,
        then: impl FnOnce(&[Slot]) -> R,
    ) -> R {
        self.match_set_cached_where(q, cache, |_| true, then)
    }

    /// [`Registry::match_set_where`] through a [`MatchCache`], as [`Registry::match_set_cached`].
    /// The cache does not know `eligible`: one cache must always be used with the same
    /// predicate (the proxy keeps its own, for the clients with an address).
    pub fn match_set_cached_where<R>(
        &self,
        q: &Arc<Query>,
        cache: &MatchCache,
        eligible: impl Fn(&ClientRecord) -> bool,
        then: impl FnOnce(&[Slot]) -> R,
    ) -> R {
        let mut last = cache.last.lock();
        let fresh = last.generation == self.generation
            && last
                .query
                .as_ref()
                .is_some_and(|cached| Arc::ptr_eq(cached, q));
        if !fresh {
            let LastMatch {
                generation,
                query,
                slots,
            } = &mut *last;
            slots.clear();
            self.match_set_into(q, |app| self.candidates(app, q), eligible, slots);
            if slots.len() > MAX_CACHED_MATCHES {
                let result = then(slots);
                *last = LastMatch::default();
                return result;
            }
            *generation = self.generation;
            *query = Some(q.clone());
        }
        then(&last.slots)
    }

    fn match_set_into<'a>(
        &'a self,
        q: &Query,
        candidates: impl Fn(&'a AppIndex) -> Candidates<'a>,
        eligible: impl Fn(&ClientRecord) -> bool,
        matched: &mut Vec<Slot>,
    ) {
        let apps = self.apps_for(q);
        let admitted = |slot: &Slot| {
            self.get(*slot)
                .is_some_and(|r| r.admitted_by(q) && eligible(r))
        };
        for app in apps.clone() {
            matched.extend(candidates(app).filter(|slot| {
                admitted(slot) && self.get(*slot).is_some_and(|r| q.matches(&r.metadata))
            }));
        }
        if matched.is_empty() && q.optional {
            for app in apps {
                matched.extend(app.members.iter().copied().filter(|slot| admitted(slot)));
            }
        }
        if let Some(selector) = &q.selector {
            let docs = matched
                .iter()
                .filter_map(|slot| self.get(*slot).map(|r| (*slot, &r.metadata)));
            *matched = select::apply(selector, docs);
        }
    }

    /// Step 7 of SPEC §6.8 over a match set: all of it, or the one client chosen.
    pub fn recipients<'m>(&self, q: &Query, matched: &'m [Slot], wanted: Recipients) -> &'m [Slot] {
        if wanted == Recipients::All && q.selector.is_none() || matched.len() <= 1 {
            return matched;
        }
        match self.pick_index(q, matched) {
            Some(i) => &matched[i..=i],
            None => &[],
        }
    }

    /// One client of a non-empty match set: the rendezvous winner for the key, else uniformly
    /// random.
    pub fn pick_one(&self, q: &Query, matched: &[Slot]) -> Option<Slot> {
        self.pick_index(q, matched).map(|i| matched[i])
    }

    /// Where in `matched` [`Registry::pick_one`]'s choice is.
    fn pick_index(&self, q: &Query, matched: &[Slot]) -> Option<usize> {
        match &q.key {
            Some(key) => rendezvous::winner(
                key,
                matched.iter().enumerate().filter_map(|(i, slot)| {
                    self.get(*slot)
                        .map(|r| (i, r.application_id.as_str(), r.client_id.as_str()))
                }),
            ),
            None if matched.is_empty() => None,
            None => Some(fastrand::usize(..matched.len())),
        }
    }

    fn apps_for(&self, q: &Query) -> Apps<'_> {
        match &q.application {
            AppFilter::Any => Apps::All(self.apps.values()),
            AppFilter::Exact(app) => Apps::One(self.apps.get(app)),
            AppFilter::Nothing => Apps::One(None),
        }
    }

    /// A superset of the members of `app` that satisfy the query's `ops`, from the indexes.
    fn candidates<'a>(&self, app: &'a AppIndex, q: &Query) -> Candidates<'a> {
        let plan = app.plan_all(&q.ops);
        match plan {
            None => Candidates::Set(app.members.iter()),
            Some(sets) if sets.len() == 1 => Candidates::Set(sets[0].iter()),
            Some(sets) => {
                let mut slots: Vec<Slot> = sets.iter().flat_map(|s| s.iter().copied()).collect();
                slots.sort_unstable();
                slots.dedup();
                Candidates::Slots(slots.into_iter())
            }
        }
    }
}

/// The applications a query addresses, without collecting them: routing to one application is
/// the common case, and it should not allocate.
#[derive(Clone)]
enum Apps<'a> {
    All(std::collections::hash_map::Values<'a, String, AppIndex>),
    One(Option<&'a AppIndex>),
}

impl<'a> Iterator for Apps<'a> {
    type Item = &'a AppIndex;

    fn next(&mut self) -> Option<&'a AppIndex> {
        match self {
            Apps::All(apps) => apps.next(),
            Apps::One(app) => app.take(),
        }
    }
}

/// An application's candidates: one index bucket (or all members) as it is, or the union of
/// several, sorted and without repeats.
enum Candidates<'a> {
    Set(std::collections::hash_set::Iter<'a, Slot>),
    Slots(std::vec::IntoIter<Slot>),
}

impl Iterator for Candidates<'_> {
    type Item = Slot;

    fn next(&mut self) -> Option<Slot> {
        match self {
            Candidates::Set(slots) => slots.next().copied(),
            Candidates::Slots(slots) => slots.next(),
        }
    }
}

fn identity_key(application_id: &str, client_id: &str) -> String {
    let mut key = String::with_capacity(application_id.len() + 1 + client_id.len());
    key.push_str(application_id);
    key.push('\0');
    key.push_str(client_id);
    key
}

// === impl AppIndex ===

impl AppIndex {
    fn index(&mut self, slot: Slot, key: &str, value: &Value, ty: MetaType, add: bool) {
        if add {
            self.keys
                .entry(key.to_owned())
                .or_default()
                .insert(slot, value, ty);
        } else if let Some(index) = self.keys.get_mut(key) {
            index.remove(slot, value, ty);
            if index.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    fn reindex(&mut self, slot: Slot, keys: &[String], metadata: &Metadata, add: bool) {
        for key in keys {
            if let Some(entry) = metadata.get(key) {
                self.index(slot, key, &entry.value, entry.ty, add);
            }
        }
    }

    /// The implicit AND of the top-level `ops`.
    fn plan_all<'a>(&'a self, conds: &[Cond]) -> Plan<'a> {
        let mut best: Plan<'a> = None;
        for cond in conds {
            let plan = self.plan(cond);
            if plan_size(&plan) < plan_size(&best) {
                best = plan;
            }
            if plan_size(&best) == 0 {
                break;
            }
        }
        best
    }

    fn plan<'a>(&'a self, cond: &Cond) -> Plan<'a> {
        match cond {
            Cond::And(children) => self.plan_all(children),
            Cond::Or(children) => {
                let mut sets = Vec::new();
                for child in children {
                    sets.extend(self.plan(child)?);
                }
                Some(sets)
            }
            // Negations match clients that lack the key: no index narrows them.
            Cond::Nor(_) => None,
            Cond::Cmp {
                path,
                op,
                operand: Operand::Value(x),
            } => {
                let key = path.top_key()?;
                if matches!(op, CmpOp::Ne | CmpOp::Nin | CmpOp::Ncontains) {
                    return None;
                }
                // No member has the key: every positive comparison is false.
                let Some(index) = self.keys.get(key) else {
                    return Some(Vec::new());
                };
                index.plan(*op, x)
            }
            Cond::Cmp { .. } => None,
        }
    }
}

// === impl KeyIndex ===

impl KeyIndex {
    fn is_empty(&self) -> bool {
        self.nums.is_empty()
            && self.strs.is_empty()
            && self.versions.is_empty()
            && self.bools.iter().all(HashSet::is_empty)
            && self.nulls.is_empty()
            && self.composites.is_empty()
    }

    fn insert(&mut self, slot: Slot, value: &Value, ty: MetaType) {
        match value {
            Value::String(s) if ty == MetaType::Version => match Version::parse(s) {
                Some(v) => {
                    self.versions.entry(v).or_default().insert(slot);
                }
                None => {
                    self.strs.entry(s.clone()).or_default().insert(slot);
                }
            },
            Value::String(s) => {
                self.strs.entry(s.clone()).or_default().insert(slot);
            }
            Value::Bool(b) => {
                self.bools[usize::from(*b)].insert(slot);
            }
            Value::Null => {
                self.nulls.insert(slot);
            }
            Value::Array(items) => {
                self.composites.insert(slot);
                for item in items {
                    match Scalar::of(item) {
                        Some(scalar) => {
                            self.elements.entry(scalar).or_default().insert(slot);
                        }
                        None => {
                            self.composite_elements.insert(slot);
                        }
                    }
                }
            }
            Value::Object(_) => {
                self.composites.insert(slot);
            }
            number => {
                if let Some(n) = number.as_num() {
                    self.nums.entry(n).or_default().insert(slot);
                }
            }
        }
    }

    fn remove(&mut self, slot: Slot, value: &Value, ty: MetaType) {
        fn take<K: Ord>(map: &mut BTreeMap<K, SlotSet>, key: &K, slot: Slot) {
            if let Some(set) = map.get_mut(key) {
                set.remove(&slot);
                if set.is_empty() {
                    map.remove(key);
                }
            }
        }
        match value {
            Value::String(s) if ty == MetaType::Version => match Version::parse(s) {
                Some(v) => take(&mut self.versions, &v, slot),
                None => take(&mut self.strs, s, slot),
            },
            Value::String(s) => take(&mut self.strs, s, slot),
            Value::Bool(b) => {
                self.bools[usize::from(*b)].remove(&slot);
            }
            Value::Null => {
                self.nulls.remove(&slot);
            }
            Value::Array(items) => {
                self.composites.remove(&slot);
                self.composite_elements.remove(&slot);
                for item in items {
                    if let Some(scalar) = Scalar::of(item)
                        && let Some(set) = self.elements.get_mut(&scalar)
                    {
                        set.remove(&slot);
                        if set.is_empty() {
                            self.elements.remove(&scalar);
                        }
                    }
                }
            }
            Value::Object(_) => {
                self.composites.remove(&slot);
            }
            number => {
                if let Some(n) = number.as_num() {
                    take(&mut self.nums, &n, slot);
                }
            }
        }
    }

    fn plan(&self, op: CmpOp, x: &Value) -> Plan<'_> {
        match op {
            CmpOp::Eq => Some(self.equal_to(x)),
            CmpOp::In => match x {
                Value::Array(items) => Some(items.iter().flat_map(|i| self.equal_to(i)).collect()),
                _ => Some(Vec::new()),
            },
            CmpOp::Gt | CmpOp::Gte | CmpOp::Lt | CmpOp::Lte => Some(self.ordered(op, x)),
            CmpOp::Contains => Some(match Scalar::of(x) {
                Some(scalar) => self.elements.get(&scalar).into_iter().collect(),
                None => vec![&self.composite_elements],
            }),
            CmpOp::Ne | CmpOp::Nin | CmpOp::Ncontains => None,
        }
    }

    /// Buckets whose values can equal `x` (SPEC §6.5 equality).
    fn equal_to(&self, x: &Value) -> Vec<&SlotSet> {
        match x {
            Value::String(s) => {
                let mut sets: Vec<&SlotSet> = self.strs.get(s).into_iter().collect();
                if let Some(v) = Version::parse(s) {
                    sets.extend(self.versions.get(&v));
                }
                sets
            }
            Value::Bool(b) => vec![&self.bools[usize::from(*b)]],
            Value::Null => vec![&self.nulls],
            Value::Array(_) | Value::Object(_) => vec![&self.composites],
            number => number
                .as_num()
                .and_then(|n| self.nums.get(&n))
                .into_iter()
                .collect(),
        }
    }

    /// Buckets whose values can order against `x` as `op` asks (SPEC §6.5 ordering).
    fn ordered(&self, op: CmpOp, x: &Value) -> Vec<&SlotSet> {
        fn bounds<T>(op: CmpOp, x: T) -> (Bound<T>, Bound<T>) {
            match op {
                CmpOp::Gt => (Bound::Excluded(x), Bound::Unbounded),
                CmpOp::Gte => (Bound::Included(x), Bound::Unbounded),
                CmpOp::Lt => (Bound::Unbounded, Bound::Excluded(x)),
                _ => (Bound::Unbounded, Bound::Included(x)),
            }
        }
        match x {
            Value::String(s) => {
                let mut sets: Vec<&SlotSet> = self
                    .strs
                    .range::<str, _>(bounds(op, s.as_str()))
                    .map(|(_, set)| set)
                    .collect();
                match Version::parse(s) {
                    Some(v) => sets.extend(self.versions.range(bounds(op, &v)).map(|(_, s)| s)),
                    // A version-typed value against a non-SemVer string orders by bytes:
                    // leave those to evaluation.
                    None => sets.extend(self.versions.values()),
                }
                sets
            }
            number => match number.as_num() {
                Some(n) => self.nums.range(bounds(op, &n)).map(|(_, s)| s).collect(),
                // Ordering is undefined for every other kind: nothing can match.
                None => Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Encoding;
    use crate::metadata::{MetadataLimits, ReservedValues};
    use crate::query::QueryLimits;
    use crate::session::Discard;
    use crate::value::Map;

    fn record(id: u64) -> ClientRecord {
        let reserved = ReservedValues {
            last_heartbeat_time: 1,
            restricted: false,
            encoding: Encoding::Json,
            ip: None,
            namespace: Value::Null,
            receive_client_updates: false,
        };
        let metadata = Metadata::initial(
            &Value::Object(Map::new()),
            reserved,
            &MetadataLimits::default(),
        )
        .unwrap();
        ClientRecord {
            application_id: "x".to_owned(),
            client_id: format!("c{id}"),
            node: Arc::from("n"),
            restricted: false,
            receive_client_updates: false,
            socket_ip: None,
            proxy_address: None,
            metadata,
            outbox: Arc::new(Discard),
            conn_id: id,
        }
    }

    fn kept(cache: &MatchCache) -> Option<usize> {
        let last = cache.last.lock();
        last.query.as_ref().map(|_| last.slots.len())
    }

    #[test]
    fn a_match_set_is_kept_up_to_the_limit_and_answered_right_beyond_it() {
        let mut registry = Registry::new("n");
        let query = Arc::new(
            Query::parse(
                &Value::Object(Map::from([("application".to_owned(), Value::from("x"))])),
                QueryLimits::default(),
            )
            .unwrap(),
        );
        let cache = MatchCache::default();
        for id in 0..MAX_CACHED_MATCHES as u64 {
            registry.register(record(id), |_| {}).unwrap();
        }
        let len = registry.match_set_cached(&query, &cache, <[Slot]>::len);
        assert_eq!(len, MAX_CACHED_MATCHES);
        assert_eq!(kept(&cache), Some(MAX_CACHED_MATCHES));
        let extra = MAX_CACHED_MATCHES as u64;
        registry.register(record(extra), |_| {}).unwrap();
        let len = registry.match_set_cached(&query, &cache, <[Slot]>::len);
        assert_eq!(len, MAX_CACHED_MATCHES + 1);
        assert_eq!(kept(&cache), None);
        assert_eq!(cache.last.lock().slots.capacity(), 0);
        let slot = registry.match_set(&query)[0];
        let conn = registry.get(slot).unwrap().conn_id;
        registry.unregister(slot, conn).unwrap();
        let len = registry.match_set_cached(&query, &cache, <[Slot]>::len);
        assert_eq!(len, MAX_CACHED_MATCHES);
        assert_eq!(kept(&cache), Some(MAX_CACHED_MATCHES));
    }
}
