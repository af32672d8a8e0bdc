//! Which held message waits for what, and when it may be acknowledged. Pure bookkeeping: the
//! consumer's task tells it what happened (a message admitted, a window joined, a submission
//! made or answered, a window flushed) and takes its decisions (finish, requeue).
//!
//! A message may be finished once everything derived from it is durable: its own points (a
//! pass-through submission, a dead letter) and its part of every aggregate window it joined.
//! A window's part is durable once the window has been flushed whole and every submission that
//! carried its points (an early eviction's included) has been answered for good.
//!
//! Windows have generations: a message that joins a window after it was flushed (a late line)
//! joins a new generation, flushed later by itself. A generation is *sealed* once any of its
//! points left for InfluxDB (an eviction, the flush): its messages' contributions can no longer
//! be taken back. Only messages in unsealed generations are [`Ledger::take_retractable`]:
//! their contributions are still only in the aggregator, so they can be retracted and the
//! messages requeued without anything being counted twice.
//!
//! Time is a `Duration` since the task started, passed in: no clock here.

use std::collections::HashMap;
use std::time::Duration;

use crate::derive::contribution::{Contribution, Lane};
use crate::derive::TopicKind;

/// A held message.
pub(crate) type MsgKey = u64;
/// A submission (points, a dead letter) whose answer someone waits for.
pub(crate) type SubmissionId = u64;
type GenKey = u64;

fn topic_index(topic: TopicKind) -> usize {
    match topic {
        TopicKind::Metrics => 0,
        TopicKind::Logs => 1,
    }
}

/// What to do with a message's acknowledgement handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verdict {
    /// Everything derived from it is durable (or refused for good): FIN.
    Finish,
    /// Not durable: give it back (REQ).
    Requeue,
}

/// How long a source lets a message be held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HoldLimits {
    /// The message is redelivered unless touched within this (NSQ's msg_timeout); `None`:
    /// it never times out.
    pub timeout: Option<Duration>,
    /// The longest it may be held at all, touches included (nsqd's `--max-msg-timeout`).
    pub max_hold: Option<Duration>,
}

struct Held<A> {
    ack: A,
    topic: TopicKind,
    received: Duration,
    touched: Duration,
    limits: HoldLimits,
    /// Submissions and generations still to be answered or released, plus one while the
    /// message is being derived.
    waits: u32,
    gens: Vec<GenKey>,
    /// Generations not yet flushed whole.
    open_gens: u32,
    contribution: Option<Contribution>,
    /// Something derived from it was not stored (the writer stopped): requeue, never finish.
    failed: bool,
}

#[derive(Debug)]
struct Gen {
    window: (Lane, i64),
    msgs: Vec<MsgKey>,
    /// Messages of `msgs` still held (retracted ones leave).
    live: usize,
    sealed: bool,
    closed: bool,
    outstanding: u32,
    failed: bool,
}

enum Waiter {
    Msg(MsgKey),
    Gen(GenKey),
}

struct Submission {
    waiters: Vec<Waiter>,
    at: Duration,
}

/// The ledger; see the module documentation. `A` is the source's acknowledgement handle.
pub(crate) struct Ledger<A> {
    msgs: HashMap<MsgKey, Held<A>>,
    next_msg: MsgKey,
    gens: HashMap<GenKey, Gen>,
    /// Each window's generation that messages join now.
    current: HashMap<(Lane, i64), GenKey>,
    next_gen: GenKey,
    subs: HashMap<SubmissionId, Submission>,
    next_sub: SubmissionId,
    decided: Vec<(A, TopicKind, Verdict)>,
    held: [usize; 2],
    /// Held messages with a window not yet flushed whole, per topic.
    open_held: [usize; 2],
    retained_values: usize,
}

impl<A> Default for Ledger<A> {
    fn default() -> Self {
        Self {
            msgs: HashMap::new(),
            next_msg: 0,
            gens: HashMap::new(),
            current: HashMap::new(),
            next_gen: 0,
            subs: HashMap::new(),
            next_sub: 0,
            decided: Vec::new(),
            held: [0; 2],
            open_held: [0; 2],
            retained_values: 0,
        }
    }
}

impl<A> Ledger<A> {
    /// Takes a message in; it is held (at least) until [`Ledger::derived`].
    pub(crate) fn admit(&mut self, ack: A, topic: TopicKind, limits: HoldLimits, now: Duration) -> MsgKey {
        let key = self.next_msg;
        self.next_msg += 1;
        self.held[topic_index(topic)] += 1;
        self.msgs.insert(
            key,
            Held {
                ack,
                topic,
                received: now,
                touched: now,
                limits,
                waits: 1,
                gens: Vec::new(),
                open_gens: 0,
                contribution: None,
                failed: false,
            },
        );
        key
    }

    /// The message contributes to `window` of `lane`: it waits for the window's current
    /// generation (a new one if the last was flushed).
    pub(crate) fn join(&mut self, msg: MsgKey, lane: Lane, window_start: i64) {
        let window = (lane, window_start);
        let gen_key = match self.current.get(&window) {
            Some(&g) if self.gens.get(&g).is_some_and(|g| !g.closed) => g,
            _ => {
                let g = self.next_gen;
                self.next_gen += 1;
                self.gens.insert(
                    g,
                    Gen {
                        window,
                        msgs: Vec::new(),
                        live: 0,
                        sealed: false,
                        closed: false,
                        outstanding: 0,
                        failed: false,
                    },
                );
                self.current.insert(window, g);
                g
            }
        };
        let Some(m) = self.msgs.get_mut(&msg) else { return };
        if m.gens.contains(&gen_key) {
            return;
        }
        m.gens.push(gen_key);
        m.waits += 1;
        m.open_gens += 1;
        if m.open_gens == 1 {
            self.open_held[topic_index(m.topic)] += 1;
        }
        if let Some(g) = self.gens.get_mut(&gen_key) {
            g.msgs.push(msg);
            g.live += 1;
        }
    }

    /// Keeps what the message added to the aggregates, for a retraction.
    pub(crate) fn keep(&mut self, msg: MsgKey, contribution: Contribution) {
        if contribution.is_empty() {
            return;
        }
        if let Some(m) = self.msgs.get_mut(&msg) {
            self.retained_values += contribution.retained_values();
            m.contribution = Some(contribution);
        }
    }

    /// A new submission, waited for by no one yet (see [`Ledger::wait_on`]).
    pub(crate) fn open_submission(&mut self, now: Duration) -> SubmissionId {
        self.new_submission(Vec::new(), now)
    }

    /// The message waits for the submission (its points, its dead letters).
    pub(crate) fn wait_on(&mut self, id: SubmissionId, msg: MsgKey) {
        let (Some(sub), Some(m)) = (self.subs.get_mut(&id), self.msgs.get_mut(&msg)) else { return };
        m.waits += 1;
        sub.waiters.push(Waiter::Msg(msg));
    }

    /// A submission the messages `msgs` wait for.
    #[cfg(test)]
    pub(crate) fn submitted_for(&mut self, msgs: &[MsgKey], now: Duration) -> SubmissionId {
        let id = self.open_submission(now);
        for &k in msgs {
            self.wait_on(id, k);
        }
        id
    }

    /// Points flushed from `lane`'s windows, submitted (or, with no points, `None`): each
    /// window's current generation is sealed, and closed when `closed` says the window has no
    /// live series left.
    pub(crate) fn flushed(
        &mut self,
        lane: Lane,
        windows: &[(i64, bool)],
        submitted: bool,
        now: Duration,
    ) -> Option<SubmissionId> {
        let mut waiters = Vec::new();
        let mut to_check = Vec::new();
        for &(start, closed) in windows {
            let Some(&g) = self.current.get(&(lane, start)) else { continue };
            let Some(gen) = self.gens.get_mut(&g) else { continue };
            if gen.closed {
                continue;
            }
            gen.sealed = true;
            if submitted {
                gen.outstanding += 1;
                waiters.push(Waiter::Gen(g));
            }
            if closed {
                gen.closed = true;
                self.current.remove(&(lane, start));
                to_check.push(g);
            }
        }
        for g in to_check {
            self.on_gen_closed(g);
        }
        if !submitted {
            return None;
        }
        Some(self.new_submission(waiters, now))
    }

    fn new_submission(&mut self, waiters: Vec<Waiter>, now: Duration) -> SubmissionId {
        let id = self.next_sub;
        self.next_sub += 1;
        self.subs.insert(id, Submission { waiters, at: now });
        id
    }

    fn on_gen_closed(&mut self, g: GenKey) {
        let Some(gen) = self.gens.get(&g) else { return };
        for k in gen.msgs.clone() {
            if let Some(m) = self.msgs.get_mut(&k) {
                m.open_gens = m.open_gens.saturating_sub(1);
                if m.open_gens == 0 {
                    self.open_held[topic_index(m.topic)] -= 1;
                }
            }
        }
        self.maybe_release(g);
    }

    fn maybe_release(&mut self, g: GenKey) {
        let done = self.gens.get(&g).is_some_and(|gen| gen.closed && gen.outstanding == 0);
        if !done {
            return;
        }
        if let Some(gen) = self.gens.remove(&g) {
            for k in gen.msgs {
                if gen.failed {
                    if let Some(m) = self.msgs.get_mut(&k) {
                        m.failed = true;
                    }
                }
                self.unwait(k);
            }
        }
    }

    /// The message has been derived and everything it waits for registered.
    pub(crate) fn derived(&mut self, msg: MsgKey) {
        self.unwait(msg);
    }

    fn unwait(&mut self, k: MsgKey) {
        let Some(m) = self.msgs.get_mut(&k) else { return };
        m.waits = m.waits.saturating_sub(1);
        if m.waits > 0 {
            return;
        }
        if let Some(m) = self.remove(k) {
            let verdict = if m.failed { Verdict::Requeue } else { Verdict::Finish };
            self.decided.push((m.ack, m.topic, verdict));
        }
    }

    fn remove(&mut self, k: MsgKey) -> Option<Held<A>> {
        let m = self.msgs.remove(&k)?;
        let t = topic_index(m.topic);
        self.held[t] -= 1;
        if m.open_gens > 0 {
            self.open_held[t] -= 1;
        }
        if let Some(c) = &m.contribution {
            self.retained_values -= c.retained_values();
        }
        Some(m)
    }

    /// A submission was answered: `durable` unless its points are not known to be stored.
    pub(crate) fn answered(&mut self, id: SubmissionId, durable: bool) {
        let Some(sub) = self.subs.remove(&id) else { return };
        for w in sub.waiters {
            match w {
                Waiter::Msg(k) => {
                    if !durable {
                        if let Some(m) = self.msgs.get_mut(&k) {
                            m.failed = true;
                        }
                    }
                    self.unwait(k);
                }
                Waiter::Gen(g) => {
                    if let Some(gen) = self.gens.get_mut(&g) {
                        gen.outstanding -= 1;
                        gen.failed |= !durable;
                    }
                    self.maybe_release(g);
                }
            }
        }
    }

    /// The decisions made since the last call.
    pub(crate) fn take_decisions(&mut self) -> Vec<(A, TopicKind, Verdict)> {
        std::mem::take(&mut self.decided)
    }

    /// Takes out every message whose contributions can be taken back (all its generations
    /// unsealed): they leave their generations, and the caller retracts the contributions
    /// and requeues the messages. Their own pending submissions are forgotten: a redelivery
    /// writes the same points again, over themselves.
    pub(crate) fn take_retractable(&mut self) -> Vec<(A, Option<Contribution>)> {
        let keys: Vec<MsgKey> = self
            .msgs
            .iter()
            .filter(|(_, m)| m.gens.iter().all(|g| self.gens.get(g).is_some_and(|g| !g.sealed)))
            .map(|(k, _)| *k)
            .collect();
        self.take_out(&keys)
    }

    /// Takes out the given messages regardless (held past their limit); the caller requeues.
    fn take_out(&mut self, keys: &[MsgKey]) -> Vec<(A, Option<Contribution>)> {
        let mut out = Vec::with_capacity(keys.len());
        for &k in keys {
            let Some(mut m) = self.remove(k) else { continue };
            for g in &m.gens {
                let empty = match self.gens.get_mut(g) {
                    Some(gen) => {
                        gen.live -= 1;
                        gen.live == 0 && !gen.sealed
                    }
                    None => false,
                };
                if empty {
                    // Nothing left in it: forgotten, the aggregator's series went with the
                    // retraction.
                    if let Some(gen) = self.gens.remove(g) {
                        if self.current.get(&gen.window) == Some(g) {
                            self.current.remove(&gen.window);
                        }
                    }
                }
            }
            out.push((m.ack, m.contribution.take()));
        }
        out
    }

    /// Messages held longer than their source allows (90 % of `max_hold`, leaving time for
    /// the requeue to reach nsqd): taken out, with whether their contributions can be taken
    /// back. The rest of their generation's messages keep waiting.
    pub(crate) fn take_expired(&mut self, now: Duration) -> Vec<(A, Option<Contribution>, bool)> {
        let expired: Vec<(MsgKey, bool)> = self
            .msgs
            .iter()
            .filter(|(_, m)| {
                m.limits.max_hold.is_some_and(|max| now.saturating_sub(m.received) >= max.mul_f64(0.9))
            })
            .map(|(k, m)| (*k, m.gens.iter().all(|g| self.gens.get(g).is_some_and(|g| !g.sealed))))
            .collect();
        let keys: Vec<MsgKey> = expired.iter().map(|(k, _)| *k).collect();
        self.take_out(&keys)
            .into_iter()
            .zip(expired)
            .map(|((ack, c), (_, retractable))| (ack, c.filter(|_| retractable), retractable))
            .collect()
    }

    /// The messages due for a touch (half their timeout since the last), marked touched now.
    pub(crate) fn due_touches(&mut self, now: Duration) -> Vec<&A> {
        let mut due = Vec::new();
        for m in self.msgs.values_mut() {
            if let Some(t) = m.limits.timeout {
                if now.saturating_sub(m.touched) >= t / 2 {
                    m.touched = now;
                    due.push(&m.ack);
                }
            }
        }
        due
    }

    /// Since when the oldest message in a window not yet flushed whole has been held.
    pub(crate) fn oldest_open(&self) -> Option<Duration> {
        self.msgs.values().filter(|m| m.open_gens > 0).map(|m| m.received).min()
    }

    /// The shortest `max_hold` among held messages.
    pub(crate) fn min_max_hold(&self) -> Option<Duration> {
        self.msgs.values().filter_map(|m| m.limits.max_hold).min()
    }

    /// When the oldest unanswered submission was made.
    pub(crate) fn oldest_submission(&self) -> Option<Duration> {
        self.subs.values().map(|s| s.at).min()
    }

    pub(crate) fn held(&self, topic: TopicKind) -> usize {
        self.held[topic_index(topic)]
    }

    pub(crate) fn open_held(&self, topic: TopicKind) -> usize {
        self.open_held[topic_index(topic)]
    }

    pub(crate) fn held_total(&self) -> usize {
        self.msgs.len()
    }

    pub(crate) fn retained_values(&self) -> usize {
        self.retained_values
    }

    /// Every held message, taken out (the end: requeue them).
    pub(crate) fn drain(&mut self) -> Vec<A> {
        let keys: Vec<MsgKey> = self.msgs.keys().copied().collect();
        let acks = keys.into_iter().filter_map(|k| self.remove(k)).map(|m| m.ack).collect();
        self.gens.clear();
        self.current.clear();
        acks
    }
}

#[cfg(test)]
mod tests;
