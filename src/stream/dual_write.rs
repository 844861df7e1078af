//! The stream's half of `sluice snapshot --reindex`: while a reindex of an
//! alias is building, every change is also transformed with the reindex's
//! *new* mapping and written to the build index (same id, routing, version
//! and version type), next to the old-shape write through the alias.
//!
//! Naming rule: a reindex replaces the name a mapping's `index` gives (an
//! alias over one index, or a concrete index that becomes an alias of the
//! same name). The stream always writes that name, so after the swap it
//! writes through the alias into the new index without any change.
//!
//! Mapping rule: the build index gets documents of the mapping files the
//! reindex stored when it started (`ReindexState::mapping_files`), the old
//! index keeps getting the mapping this process loaded. So searches on the
//! alias stay correct during the build and the build index is exact under
//! the new mapping, with no restart. After the swap this process keeps
//! writing the alias with the new mapping; a restart loads the edited
//! mapping directory.
//!
//! Ordering (DESIGN invariant 4 for the build index): the decision "does this
//! change go to the build index too" and the record of the highest commit
//! LSN transformed so far are taken under one lock, and a route is installed
//! under the same lock. So when a route is installed after commit LSN V was
//! seen, every later change belongs to a transaction with commit LSN > V and
//! is dual-written: the acknowledgement `L = V + 1` (or the start LSN if
//! nothing was seen) is true the moment it is published. The snapshot's
//! point P is exported after it, so P ≥ L. Replays (a reader reconnect or a
//! restart) are dual-written as well: a restarted process polls before it
//! streams. Duplicates go into the same op list as the originals, so the
//! checkpoint confirms a transaction only when both copies are settled;
//! a rejected duplicate is dead-lettered like any op.
//!
//! Swap (see `reindex::finish`): in `swapping` the process stops writing
//! the old shape through the alias, then waits until its confirmed LSN
//! passes the last commit LSN it had transformed (every old-shape write is
//! settled) before acknowledging, so no old-shape write can land in the new
//! index after the alias moves.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::config::{IndexName, Mapping, Mappings};
use crate::model::BulkOp;
use crate::model::Change;
use crate::model::lsn::Lsn;
use crate::snapshot::reindex::{self, ReindexState, ReindexStatus};
use crate::snapshot::{SnapshotError, StateStore};
use crate::stream::transform_step::StepError;

/// A transform step as the pipeline runs it.
pub type TransformFn = Box<dyn FnMut(&Change, &mut Vec<BulkOp>) -> Result<(), StepError> + Send>;

/// Builds a transform step (with TOAST refetch) for a set of mappings.
pub type MakeTransform = Box<dyn Fn(&Mappings) -> TransformFn + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Old shape through the alias, new shape to the build index.
    Building,
    /// New shape only, to the build index (swapping or swapped).
    Switched,
}

struct Route {
    alias: Arc<str>,
    build_index: Arc<str>,
    phase: Phase,
    transform: TransformFn,
    /// The reindex's nested mappings: their documents are read whole, not
    /// made from a change, so `stream::nested` rebuilds them for the build
    /// index (see [`DualWrite::observe`]).
    nested: Vec<Arc<Mapping>>,
}

#[derive(Default)]
struct Shared {
    routes: Vec<Route>,
    /// Highest commit LSN of any change transformed so far.
    last_version: Option<Lsn>,
    /// Bumped whenever the routes change.
    generation: u64,
}

impl Shared {
    fn saw(&mut self, version: Lsn) {
        self.last_version = Some(self.last_version.map_or(version, |v| v.max(version)));
    }
}

/// A nested mapping of a reindex: its documents go to `build_index`.
#[derive(Clone)]
pub struct NestedRoute {
    pub alias: Arc<str>,
    pub build_index: Arc<str>,
    pub mapping: Arc<Mapping>,
}

/// Routes shared between the transform step and the poller.
#[derive(Clone)]
pub struct DualWrite {
    shared: Arc<Mutex<Shared>>,
    /// Where the steps store rows they cannot transform: a route's dead
    /// letters go there as they are, not to the build index.
    dead_letter_index: Arc<str>,
}

impl DualWrite {
    pub fn new(dead_letter_index: Arc<str>) -> DualWrite {
        DualWrite {
            shared: Arc::default(),
            dead_letter_index,
        }
    }

    /// Wrap the pipeline's transform step.
    pub fn wrap(
        &self,
        mut main: impl FnMut(&Change, &mut Vec<BulkOp>) -> Result<(), StepError> + Send + 'static,
    ) -> impl FnMut(&Change, &mut Vec<BulkOp>) -> Result<(), StepError> + Send + 'static {
        let shared = self.shared.clone();
        let dead_letters = self.dead_letter_index.clone();
        move |change, out| {
            let mut sh = shared.lock().expect("dual-write routes");
            sh.saw(change.version);
            if sh.routes.is_empty() {
                drop(sh);
                return main(change, out);
            }
            let first = out.len();
            main(change, out)?;
            for route in sh.routes.iter_mut() {
                if route.phase == Phase::Switched {
                    let mut i = first;
                    while i < out.len() {
                        if *out[i].index == *route.alias {
                            out.remove(i);
                        } else {
                            i += 1;
                        }
                    }
                }
                let mut extra = Vec::new();
                (route.transform)(change, &mut extra)?;
                // The new mapping's row failures are dead letters like the
                // old one's (the step made them); ops of mappings for other
                // indices are not this route's.
                out.extend(extra.into_iter().filter_map(|mut op| {
                    if *op.index == *route.alias {
                        op.index = route.build_index.clone();
                        Some(op)
                    } else if op.index == dead_letters {
                        Some(op)
                    } else {
                        None
                    }
                }));
            }
            Ok(())
        }
    }

    /// The nested side's view, taken as each change is noted: records
    /// `version` as seen (under the same lock as a route's install, so a
    /// route installed after this reports it, and every change the route
    /// must cover is noted with the route in place), and returns the
    /// nested routes when they changed since generation `known`.
    pub fn observe(&self, version: Lsn, known: u64) -> Option<(u64, Vec<NestedRoute>)> {
        let mut sh = self.shared.lock().expect("dual-write routes");
        sh.saw(version);
        if sh.generation == known {
            return None;
        }
        let routes = sh
            .routes
            .iter()
            .flat_map(|r| {
                r.nested.iter().map(|m| NestedRoute {
                    alias: r.alias.clone(),
                    build_index: r.build_index.clone(),
                    mapping: m.clone(),
                })
            })
            .collect();
        Some((sh.generation, routes))
    }

    /// Rebuilt documents of the running mappings: those for an alias whose
    /// reindex switched go nowhere (the route's own documents replace
    /// them in the build index).
    pub fn drop_switched(&self, ops: &mut Vec<BulkOp>) {
        let sh = self.shared.lock().expect("dual-write routes");
        for route in sh.routes.iter().filter(|r| r.phase == Phase::Switched) {
            ops.retain(|op| *op.index != *route.alias);
        }
    }

    /// Install a route; returns the highest commit LSN seen before it.
    fn install(&self, route: Route) -> Option<Lsn> {
        let mut sh = self.shared.lock().expect("dual-write routes");
        // An older, switched route of the same alias stays: it is the
        // alias's current shape (a second reindex before a restart) until
        // this one switches.
        sh.routes
            .retain(|r| !(r.alias == route.alias && r.build_index == route.build_index));
        sh.routes.push(route);
        sh.generation += 1;
        sh.last_version
    }

    /// Stop writing the old shape of `alias`: its route to `build_index`
    /// becomes the only one (older generations are dropped). Returns the
    /// highest commit LSN seen before (old-shape writes may be in flight).
    fn switch(&self, alias: &str, build_index: &str) -> Option<Lsn> {
        let mut sh = self.shared.lock().expect("dual-write routes");
        sh.routes
            .retain(|r| &*r.alias != alias || &*r.build_index == build_index);
        for r in sh.routes.iter_mut().filter(|r| &*r.alias == alias) {
            r.phase = Phase::Switched;
        }
        sh.generation += 1;
        sh.last_version
    }

    /// Drop a route; returns the highest commit LSN seen before (its
    /// build-index writes may still be in flight).
    fn remove(&self, alias: &str, build_index: &str) -> Option<Lsn> {
        let mut sh = self.shared.lock().expect("dual-write routes");
        sh.routes
            .retain(|r| !(&*r.alias == alias && &*r.build_index == build_index));
        sh.generation += 1;
        sh.last_version
    }

    fn routes(&self) -> Vec<(String, String, Phase)> {
        let sh = self.shared.lock().expect("dual-write routes");
        sh.routes
            .iter()
            .map(|r| (r.alias.to_string(), r.build_index.to_string(), r.phase))
            .collect()
    }
}

/// The acknowledgement for a route installed after commit LSN `seen`
/// (`None`: before any change): every later transaction commits after
/// `seen`, and nothing before the slot's start is streamed again.
fn dual_write_from(seen: Option<Lsn>, start: Lsn) -> Lsn {
    seen.map_or(start, |v| Lsn(v.0 + 1)).max(start)
}

/// What the poller works with.
pub struct PollerSetup {
    pub dual: DualWrite,
    pub state: StateStore,
    pub pg: Arc<tokio_postgres::Client>,
    /// What this process loaded (its publication covers these tables).
    pub loaded: Mappings,
    pub make_transform: MakeTransform,
    /// This deployment's slot: only its reindexes are ours.
    pub slot: String,
    /// The slot's confirmed LSN at start: nothing before it is replayed.
    pub start: Lsn,
    /// The pipeline's confirmed LSN.
    pub confirmed: watch::Receiver<Lsn>,
}

/// Polls the state index for reindexes and drives the routes.
pub struct Poller {
    setup: PollerSetup,
    /// Aliases switched in `swapping`, with the last commit LSN seen then,
    /// waiting for it to be confirmed before acknowledging.
    pending_switch: Vec<(String, Option<Lsn>)>,
    /// Dual-write acknowledgements not yet published.
    pending_ack: Vec<(String, Lsn)>,
    /// Build indices whose route could not be built (logged once).
    refused: Vec<String>,
}

impl Poller {
    pub fn new(setup: PollerSetup) -> Poller {
        Poller {
            setup,
            pending_switch: Vec::new(),
            pending_ack: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// The mappings the build index is written with.
    async fn new_mappings(&self, r: &ReindexState) -> Result<Mappings, String> {
        if r.mapping_files.is_empty() {
            return Ok(self.setup.loaded.clone());
        }
        let files: Vec<(std::path::PathBuf, &str)> = r
            .mapping_files
            .iter()
            .map(|f| (std::path::PathBuf::from(&f.path), f.text.as_str()))
            .collect();
        let refs: Vec<(&std::path::Path, &str)> =
            files.iter().map(|(p, t)| (p.as_path(), *t)).collect();
        let mut m = Mappings::from_texts(&refs).map_err(|e| e.to_string())?;
        let catalog = crate::source::catalog::read_schemas(&self.setup.pg, &m.schemas())
            .await
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
        m.validate_against_catalog(&catalog)
            .map_err(|e| e.to_string())?;
        for nm in &m.list {
            if !matches!(&nm.index, IndexName::Fixed(n) if **n == *r.alias) {
                return Err(format!(
                    "{} writes to {} and not to `{}`",
                    nm.file.display(),
                    nm.index_pattern(),
                    r.alias
                ));
            }
        }
        let streamed = self.setup.loaded.tables();
        for nm in &m.list {
            let one = Mappings {
                list: vec![nm.clone()],
            };
            if let Some(t) = one.tables().into_iter().find(|t| !streamed.contains(t)) {
                return Err(format!(
                    "{} reads {}, which this `sluice run` does not stream (restart it with \
                     the new mapping directory so the publication includes the table)",
                    nm.file.display(),
                    t.qualified_name()
                ));
            }
        }
        Ok(m)
    }

    /// One poll: install routes for new reindexes, acknowledge, switch,
    /// and drop routes of abandoned ones. A failed poll changes nothing.
    pub async fn poll(&mut self) -> Result<(), SnapshotError> {
        let active = reindex::active_for(&self.setup.state, &self.setup.slot).await?;
        let routes = self.setup.dual.routes();
        for r in &active {
            self.follow(r, &routes).await;
        }
        self.drop_finished(&active, &routes).await?;
        self.acknowledge().await
    }

    /// Bring the route of the running reindex `r` to where its status says.
    async fn follow(&mut self, r: &ReindexState, routes: &[(String, String, Phase)]) {
        let have = routes
            .iter()
            .find(|(a, b, _)| *a == r.alias && *b == r.build_index);
        if r.status == ReindexStatus::Abandoning {
            if have.is_some() {
                let seen = self.setup.dual.remove(&r.alias, &r.build_index);
                tracing::warn!(alias = %r.alias, build_index = %r.build_index,
                    "the reindex is abandoned: no longer writing {}", r.build_index);
                self.pending_switch.push((r.alias.clone(), seen));
            } else if !r.stream_switched && !self.pending_switch.iter().any(|(a, _)| *a == r.alias)
            {
                self.pending_switch.push((r.alias.clone(), None));
            }
            return;
        }
        let phase = match have {
            Some((_, _, p)) => *p,
            None => match self.install(r).await {
                Some(p) => p,
                None => return,
            },
        };
        if r.status == ReindexStatus::Swapping && phase == Phase::Building {
            let seen = self.setup.dual.switch(&r.alias, &r.build_index);
            tracing::info!(alias = %r.alias, build_index = %r.build_index,
                "swapping: writing `{}` only to {} from now on", r.alias, r.build_index);
            self.pending_switch.push((r.alias.clone(), seen));
        }
    }

    /// Start dual-writing for `r`; its phase, or `None` if its mapping
    /// cannot be used (logged once).
    async fn install(&mut self, r: &ReindexState) -> Option<Phase> {
        if self.refused.contains(&r.build_index) {
            return None;
        }
        let mappings = match self.new_mappings(r).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(alias = %r.alias, build_index = %r.build_index, error = %e,
                    "cannot write the reindex's build index with its mapping; not dual-writing");
                self.refused.push(r.build_index.clone());
                return None;
            }
        };
        let phase = if r.status == ReindexStatus::Building {
            Phase::Building
        } else {
            Phase::Switched
        };
        let seen = self.setup.dual.install(Route {
            alias: r.alias.as_str().into(),
            build_index: r.build_index.as_str().into(),
            phase,
            transform: (self.setup.make_transform)(&mappings),
            nested: mappings
                .list
                .iter()
                .filter(|m| m.is_nested())
                .map(|m| Arc::new(m.clone()))
                .collect(),
        });
        let from = dual_write_from(seen, self.setup.start);
        tracing::info!(alias = %r.alias, build_index = %r.build_index, %from,
            "writing every change of `{}` to {} as well", r.alias, r.build_index);
        if phase == Phase::Switched {
            self.pending_switch.push((r.alias.clone(), seen));
        } else if r.dual_write_from.is_none() {
            // Valid from now on, so kept until published.
            self.pending_ack.push((r.alias.clone(), from));
        }
        Some(phase)
    }

    /// Routes whose reindex is no longer running: keep a swapped one (it is
    /// the alias's shape now), drop the others.
    async fn drop_finished(
        &mut self,
        active: &[ReindexState],
        routes: &[(String, String, Phase)],
    ) -> Result<(), SnapshotError> {
        for (alias, build, phase) in routes {
            if active
                .iter()
                .any(|r| r.alias == *alias && r.build_index == *build)
            {
                continue;
            }
            match reindex::load(&self.setup.state, alias).await? {
                Some(r) if r.status == ReindexStatus::Swapped && r.build_index == *build => {
                    // Keep writing the new shape (the alias now points at it).
                    self.setup.dual.switch(alias, build);
                }
                Some(r) if r.build_index == *build => {}
                // A swapped generation stays the alias's shape even when a
                // newer reindex replaced its record.
                _ if *phase == Phase::Switched => {}
                _ => {
                    tracing::warn!(%alias, build_index = %build,
                        "the reindex is gone: no longer writing its build index");
                    self.setup.dual.remove(alias, build);
                }
            }
        }
        Ok(())
    }

    /// Publish the dual-write acknowledgements, and the switches whose
    /// old-shape writes are all confirmed.
    async fn acknowledge(&mut self) -> Result<(), SnapshotError> {
        while let Some((alias, from)) = self.pending_ack.first().cloned() {
            reindex::acknowledge_dual_write(&self.setup.state, &alias, from).await?;
            self.pending_ack.remove(0);
        }
        let confirmed = *self.setup.confirmed.borrow();
        let mut i = 0;
        while i < self.pending_switch.len() {
            let (alias, seen) = self.pending_switch[i].clone();
            if seen.is_none_or(|v| confirmed > v) {
                reindex::acknowledge_switch(&self.setup.state, &alias).await?;
                tracing::info!(%alias, %confirmed, "every write `{alias}` no longer makes is settled");
                self.pending_switch.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Poll every `every` until `stop` completes; failures are logged and
    /// retried (the routes stay as they are).
    pub async fn run(
        mut self,
        every: std::time::Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.poll().await {
                tracing::warn!(error = %e, "polling for reindexes failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChangeKind, Relation, ReplicaIdentity};
    use crate::model::{OpAction, OpOrigin};

    pub(super) fn change(version: u64) -> Change {
        Change {
            relation: Arc::new(Relation {
                id: 1,
                schema: "public".into(),
                name: "items".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: Vec::new(),
            }),
            kind: ChangeKind::Truncate,
            version: Lsn(version),
            commit_time: chrono::Utc::now(),
            xid: 0,
        }
    }

    pub(super) fn op(index: &str, doc: &str, c: &Change) -> BulkOp {
        BulkOp {
            action: OpAction::Index {
                doc: doc.as_bytes().to_vec(),
            },
            index: index.into(),
            id: "7".into(),
            routing: Some("r".into()),
            pipeline: None,
            version: c.version.0,
            origin: OpOrigin {
                table: "public.items".into(),
                key: "{\"id\":7}".into(),
                lsn: c.version,
            },
        }
    }

    /// The loaded mapping writes the old shape to `items` and to `other`.
    fn main_step(c: &Change, out: &mut Vec<BulkOp>) -> Result<(), StepError> {
        out.push(op("items", "old", c));
        out.push(op("other", "old", c));
        Ok(())
    }

    /// The reindex's mapping: the new shape (its other targets are ignored).
    fn route(phase: Phase) -> Route {
        Route {
            alias: "items".into(),
            build_index: "items-2".into(),
            phase,
            transform: Box::new(|c: &Change, out: &mut Vec<BulkOp>| {
                out.push(op("items", "new", c));
                out.push(op("elsewhere", "new", c));
                Ok(())
            }),
            nested: Vec::new(),
        }
    }

    fn targets(ops: &[BulkOp]) -> Vec<(String, String)> {
        ops.iter()
            .map(|o| match &o.action {
                OpAction::Index { doc } => {
                    (o.index.to_string(), String::from_utf8(doc.clone()).unwrap())
                }
                OpAction::Delete => (o.index.to_string(), "delete".into()),
            })
            .collect()
    }

    #[test]
    fn without_a_reindex_the_main_step_runs_alone() {
        let dual = DualWrite::new("dead-letters".into());
        let mut step = dual.wrap(main_step);
        let mut out = Vec::new();
        step(&change(10), &mut out).unwrap();
        assert_eq!(
            targets(&out),
            [
                ("items".into(), "old".into()),
                ("other".into(), "old".into())
            ]
        );
    }

    #[test]
    fn a_route_reports_the_highest_commit_lsn_seen_before_it_so_every_later_transaction_is_duplicated()
     {
        let dual = DualWrite::new("dead-letters".into());
        let mut step = dual.wrap(main_step);
        let mut out = Vec::new();
        step(&change(30), &mut out).unwrap();
        // A replayed, older transaction does not lower the mark.
        step(&change(20), &mut out).unwrap();
        assert_eq!(out.len(), 4, "nothing duplicated before the route");
        assert_eq!(dual.install(route(Phase::Building)), Some(Lsn(30)));
        out.clear();
        step(&change(31), &mut out).unwrap();
        assert_eq!(
            targets(&out),
            [
                ("items".into(), "old".into()),
                ("other".into(), "old".into()),
                ("items-2".into(), "new".into()),
            ]
        );
        // The duplicate is the same write: id, routing, version.
        let (orig, dup) = (&out[0], &out[2]);
        assert_eq!(
            (&dup.id, &dup.routing, dup.version),
            (&orig.id, &orig.routing, orig.version)
        );
    }

    #[test]
    fn a_row_the_reindex_mapping_refuses_is_dead_lettered_and_the_old_shape_still_written() {
        let dual = DualWrite::new("dead-letters".into());
        let mut step = dual.wrap(main_step);
        dual.install(Route {
            alias: "items".into(),
            build_index: "items-2".into(),
            phase: Phase::Building,
            // What the step makes of a row the new mapping cannot convert.
            transform: Box::new(|c: &Change, out: &mut Vec<BulkOp>| {
                out.push(op("dead-letters", "refused", c));
                Ok(())
            }),
            nested: Vec::new(),
        });
        let mut out = Vec::new();
        step(&change(60), &mut out).unwrap();
        assert_eq!(
            targets(&out),
            [
                ("items".into(), "old".into()),
                ("other".into(), "old".into()),
                ("dead-letters".into(), "refused".into()),
            ]
        );
    }

    #[test]
    fn a_route_installed_before_any_change_reports_none() {
        let dual = DualWrite::new("dead-letters".into());
        assert_eq!(dual.install(route(Phase::Building)), None);
    }

    #[test]
    fn the_acknowledged_lsn_follows_the_last_change_seen_and_never_precedes_the_start() {
        assert_eq!(dual_write_from(None, Lsn(100)), Lsn(100));
        assert_eq!(dual_write_from(Some(Lsn(150)), Lsn(100)), Lsn(151));
        // A replay of a transaction before the start (reconnect) does not
        // move the acknowledgement back.
        assert_eq!(dual_write_from(Some(Lsn(50)), Lsn(100)), Lsn(100));
    }

    #[test]
    fn after_the_switch_the_alias_gets_only_the_new_shape_and_other_indices_are_untouched() {
        let dual = DualWrite::new("dead-letters".into());
        let mut step = dual.wrap(main_step);
        dual.install(route(Phase::Building));
        let mut out = Vec::new();
        step(&change(40), &mut out).unwrap();
        assert_eq!(dual.switch("items", "items-2"), Some(Lsn(40)));
        out.clear();
        step(&change(41), &mut out).unwrap();
        assert_eq!(
            targets(&out),
            [
                ("other".into(), "old".into()),
                ("items-2".into(), "new".into())
            ]
        );
    }

    #[test]
    fn a_second_reindex_before_a_restart_builds_from_the_first_ones_shape_and_replaces_it_at_its_switch()
     {
        let dual = DualWrite::new("dead-letters".into());
        let mut step = dual.wrap(main_step);
        dual.install(route(Phase::Building));
        dual.switch("items", "items-2");
        // The next generation: its old shape is the first reindex's.
        dual.install(Route {
            alias: "items".into(),
            build_index: "items-3".into(),
            phase: Phase::Building,
            transform: Box::new(|c: &Change, out: &mut Vec<BulkOp>| {
                out.push(op("items", "newer", c));
                Ok(())
            }),
            nested: Vec::new(),
        });
        let mut out = Vec::new();
        step(&change(50), &mut out).unwrap();
        assert_eq!(
            targets(&out),
            [
                ("other".into(), "old".into()),
                ("items-2".into(), "new".into()),
                ("items-3".into(), "newer".into()),
            ]
        );
        assert_eq!(dual.switch("items", "items-3"), Some(Lsn(50)));
        out.clear();
        step(&change(51), &mut out).unwrap();
        assert_eq!(
            targets(&out),
            [
                ("other".into(), "old".into()),
                ("items-3".into(), "newer".into())
            ]
        );
    }

    #[test]
    fn removing_a_route_by_its_build_index_keeps_a_newer_route_of_the_same_alias() {
        let dual = DualWrite::new("dead-letters".into());
        dual.install(route(Phase::Building));
        dual.remove("items", "items-1");
        assert_eq!(dual.routes().len(), 1);
        dual.remove("items", "items-2");
        assert!(dual.routes().is_empty());
    }
}

#[cfg(test)]
mod nested_tests {
    use super::*;

    fn nested_mapping() -> Arc<Mapping> {
        let m = Mappings::from_texts(&[(
            std::path::Path::new("orders.toml"),
            "table = \"public.orders\"\nindex = \"orders\"\n",
        )])
        .unwrap();
        Arc::new(m.list[0].clone())
    }

    fn nested_route(mapping: &Arc<Mapping>) -> Route {
        Route {
            alias: "orders".into(),
            build_index: "orders-2".into(),
            phase: Phase::Building,
            transform: Box::new(|_: &Change, _: &mut Vec<BulkOp>| Ok(())),
            nested: vec![mapping.clone()],
        }
    }

    #[test]
    fn a_version_observed_before_a_route_is_installed_is_reported_by_the_install() {
        let dual = DualWrite::new("dead-letters".into());
        assert!(dual.observe(Lsn(40), 0).is_none(), "no route: nothing new");
        // The nested side noted a change at 50 before the route existed:
        // the route's acknowledgement must not claim it.
        assert!(dual.observe(Lsn(50), 0).is_none());
        let m = nested_mapping();
        let seen = dual.install(nested_route(&m));
        assert_eq!(seen, Some(Lsn(50)));
        assert_eq!(dual_write_from(seen, Lsn(1)), Lsn(51));
    }

    #[test]
    fn nested_routes_are_reported_once_per_change_of_the_routes() {
        let dual = DualWrite::new("dead-letters".into());
        let m = nested_mapping();
        dual.install(nested_route(&m));
        let (generation, routes) = dual.observe(Lsn(60), 0).expect("a new route");
        assert_eq!(routes.len(), 1);
        assert_eq!(&*routes[0].build_index, "orders-2");
        assert!(
            Arc::ptr_eq(&routes[0].mapping, &m),
            "the same mapping each time"
        );
        assert!(dual.observe(Lsn(61), generation).is_none(), "unchanged");
        dual.remove("orders", "orders-2");
        let (_, routes) = dual.observe(Lsn(62), generation).expect("the route ended");
        assert!(routes.is_empty());
    }

    #[test]
    fn rebuilt_documents_for_a_switched_alias_are_dropped_and_others_kept() {
        let dual = DualWrite::new("dead-letters".into());
        let m = nested_mapping();
        dual.install(nested_route(&m));
        let c = super::tests::change(70);
        let mut ops = vec![
            super::tests::op("orders", "old", &c),
            super::tests::op("other", "old", &c),
        ];
        dual.drop_switched(&mut ops);
        assert_eq!(
            ops.len(),
            2,
            "building: the old shape still goes to the alias"
        );
        dual.switch("orders", "orders-2");
        dual.drop_switched(&mut ops);
        let left: Vec<&str> = ops.iter().map(|o| &*o.index).collect();
        assert_eq!(left, ["other"]);
    }
}
