//! The ledger's rules, event by event.

use super::*;
use crate::derive::contribution::Contribution;

const W1: i64 = 10;
const W2: i64 = 20;

fn t(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn nsq() -> HoldLimits {
    HoldLimits { timeout: Some(t(2000)), max_hold: Some(t(60_000)) }
}

fn decisions(l: &mut Ledger<&'static str>) -> Vec<(&'static str, Verdict)> {
    let mut d: Vec<_> = l.take_decisions().into_iter().map(|(a, _, v)| (a, v)).collect();
    d.sort();
    d
}

#[test]
fn finished_once_its_points_and_its_window_are_durable() {
    let mut l = Ledger::default();
    let a = l.admit("a", TopicKind::Metrics, nsq(), t(0));
    l.join(a, Lane::Requests, W1);
    let pass = l.submitted_for(&[a], t(0));
    l.derived(a);
    assert_eq!((l.held(TopicKind::Metrics), l.open_held(TopicKind::Metrics)), (1, 1));
    l.answered(pass, true);
    assert!(decisions(&mut l).is_empty(), "its window is still open");
    let flush = l.flushed(Lane::Requests, &[(W1, true)], true, t(5)).unwrap();
    assert_eq!(l.open_held(TopicKind::Metrics), 0);
    assert!(decisions(&mut l).is_empty(), "the window's points are not answered yet");
    l.answered(flush, true);
    assert_eq!(decisions(&mut l), [("a", Verdict::Finish)]);
    assert_eq!((l.held_total(), l.oldest_submission()), (0, None));
}

#[test]
fn a_message_with_nothing_to_wait_for_is_finished_when_derived() {
    let mut l = Ledger::default();
    let a = l.admit("a", TopicKind::Logs, nsq(), t(0));
    l.derived(a);
    assert_eq!(decisions(&mut l), [("a", Verdict::Finish)]);
}

#[test]
fn an_eviction_seals_the_window_and_its_points_are_waited_for_too() {
    let mut l = Ledger::default();
    let a = l.admit("a", TopicKind::Metrics, nsq(), t(0));
    l.join(a, Lane::Requests, W1);
    l.derived(a);
    // A series of W1 evicted early: W1 stays open, sealed.
    let evicted = l.flushed(Lane::Requests, &[(W1, false)], true, t(1)).unwrap();
    let b = l.admit("b", TopicKind::Metrics, nsq(), t(2));
    l.join(b, Lane::Requests, W1);
    l.derived(b);
    assert!(l.take_retractable().is_empty(), "W1's points left already: nothing can be taken back");
    let last = l.flushed(Lane::Requests, &[(W1, true)], true, t(3)).unwrap();
    l.answered(last, true);
    assert!(decisions(&mut l).is_empty(), "the eviction's points are not answered yet");
    l.answered(evicted, true);
    assert_eq!(decisions(&mut l), [("a", Verdict::Finish), ("b", Verdict::Finish)]);
}

#[test]
fn a_late_message_waits_for_the_windows_next_generation() {
    let mut l = Ledger::default();
    let a = l.admit("a", TopicKind::Metrics, nsq(), t(0));
    l.join(a, Lane::Requests, W1);
    l.derived(a);
    let first = l.flushed(Lane::Requests, &[(W1, true)], true, t(1)).unwrap();
    let late = l.admit("late", TopicKind::Metrics, nsq(), t(2));
    l.join(late, Lane::Requests, W1);
    l.join(late, Lane::Requests, W1);
    l.derived(late);
    l.answered(first, true);
    assert_eq!(decisions(&mut l), [("a", Verdict::Finish)], "the late line is in another point");
    let second = l.flushed(Lane::Requests, &[(W1, true)], true, t(3)).unwrap();
    l.answered(second, true);
    assert_eq!(decisions(&mut l), [("late", Verdict::Finish)]);
}

#[test]
fn points_not_stored_mean_a_requeue() {
    let mut l = Ledger::default();
    let a = l.admit("a", TopicKind::Metrics, nsq(), t(0));
    let b = l.admit("b", TopicKind::Metrics, nsq(), t(0));
    l.join(b, Lane::Logs, W1);
    let pass = l.submitted_for(&[a], t(0));
    l.derived(a);
    l.derived(b);
    l.answered(pass, false);
    let flush = l.flushed(Lane::Logs, &[(W1, true)], true, t(1)).unwrap();
    l.answered(flush, false);
    assert_eq!(decisions(&mut l), [("a", Verdict::Requeue), ("b", Verdict::Requeue)]);
}

#[test]
fn only_unsealed_contributions_are_taken_back() {
    let mut l = Ledger::default();
    let a = l.admit("a", TopicKind::Metrics, nsq(), t(0));
    l.join(a, Lane::Requests, W1);
    l.keep(a, Contribution::default());
    l.derived(a);
    let b = l.admit("b", TopicKind::Metrics, nsq(), t(0));
    l.join(b, Lane::Requests, W1);
    l.join(b, Lane::Requests, W2);
    l.derived(b);
    let c = l.admit("c", TopicKind::Metrics, nsq(), t(0));
    l.join(c, Lane::Requests, W2);
    let pass = l.submitted_for(&[c], t(0));
    l.derived(c);
    // W1 flushed, its points pending: a and b stay; c is only in W2, unsealed.
    let w1 = l.flushed(Lane::Requests, &[(W1, true)], true, t(1)).unwrap();
    let taken: Vec<&str> = l.take_retractable().into_iter().map(|(ack, _)| ack).collect();
    assert_eq!(taken, ["c"]);
    assert_eq!(l.held(TopicKind::Metrics), 2);
    // c's pass-through answer comes later: nothing happens.
    l.answered(pass, true);
    l.answered(w1, true);
    assert_eq!(decisions(&mut l), [("a", Verdict::Finish)], "b still waits for W2");
    let w2 = l.flushed(Lane::Requests, &[(W2, true)], true, t(2)).unwrap();
    l.answered(w2, true);
    assert_eq!(decisions(&mut l), [("b", Verdict::Finish)]);
    assert_eq!(l.held_total(), 0);
}

#[test]
fn a_window_whose_messages_were_all_taken_back_is_forgotten() {
    let mut l = Ledger::default();
    let a = l.admit("a", TopicKind::Metrics, nsq(), t(0));
    l.join(a, Lane::Requests, W1);
    l.derived(a);
    assert_eq!(l.take_retractable().len(), 1);
    // The redelivery joins a fresh generation, and a flush of nothing releases nothing old.
    let again = l.admit("again", TopicKind::Metrics, nsq(), t(5));
    l.join(again, Lane::Requests, W1);
    l.derived(again);
    let f = l.flushed(Lane::Requests, &[(W1, true)], true, t(6)).unwrap();
    l.answered(f, true);
    assert_eq!(decisions(&mut l), [("again", Verdict::Finish)]);
}

#[test]
fn touches_come_at_half_the_timeout() {
    let mut l = Ledger::default();
    let a = l.admit("a", TopicKind::Metrics, nsq(), t(0));
    l.join(a, Lane::Requests, W1);
    l.derived(a);
    l.admit("mem", TopicKind::Logs, HoldLimits::default(), t(0));
    assert!(l.due_touches(t(999)).is_empty());
    assert_eq!(l.due_touches(t(1000)), [&"a"]);
    assert!(l.due_touches(t(1500)).is_empty(), "touched at 1000");
    assert_eq!(l.due_touches(t(2100)), [&"a"]);
}

#[test]
fn messages_held_too_long_are_taken_out() {
    let mut l = Ledger::default();
    let a = l.admit("a", TopicKind::Metrics, nsq(), t(0));
    l.join(a, Lane::Requests, W1);
    l.derived(a);
    let b = l.admit("b", TopicKind::Metrics, nsq(), t(10_000));
    l.join(b, Lane::Requests, W2);
    l.derived(b);
    let _pending = l.flushed(Lane::Requests, &[(W1, true)], true, t(1)).unwrap();
    assert!(l.take_expired(t(53_999)).is_empty());
    let out: Vec<(&str, bool)> = l.take_expired(t(54_000)).into_iter().map(|(a, _, r)| (a, r)).collect();
    assert_eq!(out, [("a", false)], "sealed: requeued without a retraction");
    assert_eq!(l.oldest_open(), Some(t(10_000)));
    assert_eq!(l.min_max_hold(), Some(t(60_000)));
}
