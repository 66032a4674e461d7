use std::time::{Duration, SystemTime};

use super::*;

fn day(n: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_633_600 + n * 86_400 + 3600)
}

#[test]
fn traffic_is_counted_by_utc_day_and_compared_with_thirty_days_before() {
    let mut b = BurnDown::default();
    assert_eq!(b.summary(day(0)), None);
    // Day 0: 100 requests, 40 new. The totals are cumulative, as the sampler reads them.
    b.record(day(0), 60, 20);
    b.record(day(0), 100, 40);
    // Day 31: 50 more, 31 of them new.
    b.record(day(31), 150, 71);
    let s = b.summary(day(31)).unwrap();
    assert_eq!(s.date, date(day(31)));
    assert!((s.new_share - 0.62).abs() < 1e-9);
    let before = s.before.unwrap();
    assert_eq!((before.date.clone(), before.requests), (date(day(0)), 100));
    assert!((before.new_share - 0.4).abs() < 1e-9);
    assert_eq!(s.days.len(), 2);
    assert_eq!(date(day(0)), "2025-12-02");
}

#[test]
fn a_young_history_compares_with_its_oldest_day_and_a_first_day_with_none() {
    let mut b = BurnDown::default();
    b.record(day(0), 10, 1);
    assert_eq!(b.summary(day(0)).unwrap().before, None);
    b.record(day(3), 20, 10);
    let s = b.summary(day(3)).unwrap();
    assert_eq!(s.before.unwrap().date, date(day(0)));
}

#[test]
fn days_are_kept_for_a_bounded_time_and_a_saved_burn_down_merges() {
    let mut b = BurnDown::default();
    for n in 0..(KEEP_DAYS as u64 + 10) {
        b.record(day(n), n + 1, 0);
    }
    assert_eq!(b.summary(day(500)).unwrap().days.len(), KEEP_DAYS);
    let text = serde_json::to_string(&b).unwrap();
    assert!(text.contains(&date(day(KEEP_DAYS as u64 + 9))));
    // A restarted process adds to what it reads back (its own counters start at zero).
    let mut again = BurnDown::default();
    again.merge(
        serde_json::from_str(&text).unwrap(),
        day(KEEP_DAYS as u64 + 9),
    );
    again.record(day(KEEP_DAYS as u64 + 9), 5, 5);
    let last = again.summary(day(1000)).unwrap();
    assert_eq!(last.days.last().unwrap().requests, 6);
}

#[test]
fn saved_days_from_the_future_or_malformed_are_left_out_and_counts_saturate() {
    let saved: BurnDown = serde_json::from_str(
        r#"{"days":{"2099-01-01":{"requests":10,"new":10},"garbage":{"requests":1,"new":1},
        "2025-12-01":{"requests":18446744073709551615,"new":5}}}"#,
    )
    .unwrap();
    let mut b = BurnDown::default();
    b.merge(saved, day(0));
    b.record(day(0), 4, 1);
    b.merge(
        serde_json::from_str(r#"{"days":{"2025-12-01":{"requests":7,"new":1}}}"#).unwrap(),
        day(0),
    );
    let s = b.summary(day(0)).unwrap();
    assert_eq!(s.date, date(day(0)), "today, not a future day");
    let dates: Vec<&str> = s.days.iter().map(|d| d.date.as_str()).collect();
    assert_eq!(dates, ["2025-12-01", "2025-12-02"]);
    assert_eq!(s.days[0].requests, u64::MAX);
}
