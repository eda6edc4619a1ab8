use proptest::prelude::*;
use time::macros::datetime;

use super::*;

const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

fn p(s: &str) -> Period {
    s.parse().unwrap()
}

fn policy() -> Policy {
    Policy::runbook()
}

/// A tenant as it is right after creation: one active key, activated at `T0`.
fn fresh_tenant() -> Vec<Key> {
    let mut keys = Vec::new();
    let plan = rotate(&keys, SigningAlg::Es256, false);
    plan.apply(&mut keys, T0, Some("k0")).unwrap();
    keys
}

fn state_of(keys: &[Key], kid: &str) -> KeyState {
    keys.iter().find(|k| k.kid == kid).unwrap().state
}

#[test]
fn a_new_tenant_has_exactly_one_active_key() {
    let keys = fresh_tenant();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].state, KeyState::Active);
    assert_eq!(keys[0].activated_at, Some(T0));
}

#[test]
fn activation_before_stage_lead_is_refused_unless_forced() {
    let mut keys = fresh_tenant();
    stage(SigningAlg::Es256).apply(&mut keys, T0, Some("k1")).unwrap();
    let early = T0 + time::Duration::days(1);
    let err = activate(&keys, "k1", early, p("2d"), false).unwrap_err();
    assert_eq!(err, LifecycleError::TooEarly { ready_at: T0 + time::Duration::days(2) });
    let plan = activate(&keys, "k1", early, p("2d"), true).unwrap();
    plan.apply(&mut keys, early, None).unwrap();
    assert_eq!(state_of(&keys, "k1"), KeyState::Active);
    assert_eq!(state_of(&keys, "k0"), KeyState::Retired);
}

#[test]
fn only_a_staged_key_can_be_activated() {
    let keys = fresh_tenant();
    assert_eq!(activate(&keys, "k0", T0, Period::ZERO, true), Err(LifecycleError::NotStaged("active")));
    assert_eq!(activate(&keys, "nope", T0, Period::ZERO, true), Err(LifecycleError::UnknownKid));
}

#[test]
fn demotion_comes_before_promotion_so_two_keys_are_never_active() {
    let mut keys = fresh_tenant();
    stage(SigningAlg::Es256).apply(&mut keys, T0, Some("k1")).unwrap();
    let plan = activate(&keys, "k1", T0 + time::Duration::days(3), p("2d"), false).unwrap();
    assert_eq!(plan.transitions[0].to, KeyState::Retired);
    assert_eq!(plan.transitions[1].to, KeyState::Active);
}

#[test]
fn rotation_prefers_a_staged_key_relying_parties_already_have() {
    let mut keys = fresh_tenant();
    stage(SigningAlg::Es256).apply(&mut keys, T0, Some("k1")).unwrap();
    let plan = rotate(&keys, SigningAlg::Es256, true);
    assert_eq!(plan.fresh, None);
    plan.apply(&mut keys, T0, None).unwrap();
    assert_eq!(state_of(&keys, "k0"), KeyState::Revoked);
    assert_eq!(state_of(&keys, "k1"), KeyState::Active);
}

#[test]
fn revoking_the_active_key_activates_a_replacement_in_the_same_plan() {
    let mut keys = fresh_tenant();
    let plan = revoke(&keys, Some("k0"), SigningAlg::EdDsa).unwrap();
    assert_eq!(plan.fresh, Some(SigningAlg::EdDsa));
    plan.apply(&mut keys, T0, Some("k1")).unwrap();
    assert_eq!(state_of(&keys, "k0"), KeyState::Revoked);
    assert_eq!(state_of(&keys, "k1"), KeyState::Active);
}

#[test]
fn revoking_a_staged_key_leaves_the_active_key_alone() {
    let mut keys = fresh_tenant();
    stage(SigningAlg::Es256).apply(&mut keys, T0, Some("k1")).unwrap();
    let plan = revoke(&keys, Some("k1"), SigningAlg::Es256).unwrap();
    assert_eq!(plan.fresh, None);
    assert_eq!(plan.transitions.len(), 1);
}

#[test]
fn revoking_twice_changes_nothing_the_second_time() {
    let mut keys = fresh_tenant();
    stage(SigningAlg::Es256).apply(&mut keys, T0, Some("k1")).unwrap();
    revoke(&keys, Some("k1"), SigningAlg::Es256).unwrap().apply(&mut keys, T0, None).unwrap();
    assert!(revoke(&keys, Some("k1"), SigningAlg::Es256).unwrap().is_empty());
}

#[test]
fn a_stale_plan_is_refused_whole() {
    let mut keys = fresh_tenant();
    let plan = rotate(&keys, SigningAlg::Es256, false);
    plan.apply(&mut keys, T0, Some("k1")).unwrap();
    let before = keys.clone();
    assert!(plan.apply(&mut keys, T0, Some("k2")).is_err());
    assert_eq!(keys, before);
}

#[test]
fn retired_key_expires_at_the_later_of_overlap_and_last_token_exp() {
    let mut key = Key::new_staged("k".into(), SigningAlg::Es256, T0);
    key.state = KeyState::Retired;
    key.retired_at = Some(T0);
    assert_eq!(key.expires_at(p("7d"), p("30s")), Some(T0 + time::Duration::days(7)));
    key.last_token_exp = Some(T0 + time::Duration::days(8));
    let expected = T0 + time::Duration::days(8) + time::Duration::seconds(30);
    assert_eq!(key.expires_at(p("7d"), p("30s")), Some(expected));
    assert_eq!(key.usable_for_verification(expected - time::Duration::seconds(1), p("7d"), p("30s")), Ok(()));
    assert_eq!(key.usable_for_verification(expected, p("7d"), p("30s")), Err(KeyUnusable::Expired));
}

#[test]
fn schedule_stages_then_activates_then_expires() {
    let pol = policy();
    let leeway = p("30s");
    let mut keys = fresh_tenant();
    let day = |d: i64| T0 + time::Duration::days(d);
    assert!(schedule(&keys, &pol, day(87), leeway).is_empty());
    let plan = schedule(&keys, &pol, day(88), leeway);
    assert_eq!(plan.fresh, Some(SigningAlg::Es256));
    plan.apply(&mut keys, day(88), Some("k1")).unwrap();
    assert!(schedule(&keys, &pol, day(88), leeway).is_empty(), "the schedule is idempotent");
    schedule(&keys, &pol, day(90), leeway).apply(&mut keys, day(90), None).unwrap();
    assert_eq!(state_of(&keys, "k1"), KeyState::Active);
    assert_eq!(state_of(&keys, "k0"), KeyState::Retired);
    assert!(schedule(&keys, &pol, day(96), leeway).is_empty());
    schedule(&keys, &pol, day(97), leeway).apply(&mut keys, day(97), None).unwrap();
    assert_eq!(state_of(&keys, "k0"), KeyState::Expired);
}

#[derive(Debug, Clone)]
enum Op {
    Stage,
    Activate(usize, bool),
    Rotate(bool),
    Revoke(Option<usize>),
    Tick(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Stage),
        (0usize..8, any::<bool>()).prop_map(|(i, f)| Op::Activate(i, f)),
        any::<bool>().prop_map(Op::Rotate),
        proptest::option::of(0usize..8).prop_map(Op::Revoke),
        (1u32..200).prop_map(Op::Tick),
    ]
}

proptest! {
    /// After any sequence of operations exactly one key is active, and every plan computed
    /// from the current keys applies (none is stale against the data it was computed from).
    #[test]
    fn lifecycle_invariants_hold_after_any_sequence(ops in proptest::collection::vec(op(), 1..60)) {
        let pol = policy();
        let mut keys = fresh_tenant();
        let mut now = T0;
        let mut next_kid = 1;
        for op in ops {
            let kid_at = |keys: &[Key], i: usize| keys[i % keys.len()].kid.clone();
            let plan = match op {
                Op::Stage => Ok(stage(SigningAlg::Es256)),
                Op::Activate(i, force) => activate(&keys, &kid_at(&keys, i), now, pol.stage_lead, force),
                Op::Rotate(emergency) => Ok(rotate(&keys, SigningAlg::Es256, emergency)),
                Op::Revoke(i) => revoke(&keys, i.map(|i| kid_at(&keys, i)).as_deref(), SigningAlg::Es256),
                Op::Tick(days) => {
                    now += time::Duration::days(i64::from(days));
                    Ok(schedule(&keys, &pol, now, p("30s")))
                }
            };
            if let Ok(plan) = plan {
                let kid = format!("k{next_kid}");
                next_kid += 1;
                plan.apply(&mut keys, now, Some(&kid)).expect("a fresh plan applies");
            }
            let active = keys.iter().filter(|k| k.state == KeyState::Active).count();
            prop_assert_eq!(active, 1, "keys: {:?}", keys);
        }
    }
}
