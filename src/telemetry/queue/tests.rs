use super::*;

struct Record(usize);

impl Exported for Record {
    fn items(&self) -> u64 {
        2
    }

    fn bytes(&self) -> usize {
        self.0
    }
}

#[test]
fn the_queue_is_bounded_by_bytes_as_well_as_by_records() {
    // Found by an adversarial review: records sized by clients (30 KB paths) behind a hanging
    // collector took 200 MB.
    let q = ExportQueue::<Record>::default();
    let big = QUEUE_BYTES / 4;
    for _ in 0..4 {
        q.push(Record(big));
    }
    assert_eq!(q.dropped.load(Ordering::Relaxed), 0);
    q.push(Record(1));
    assert_eq!(
        q.dropped.load(Ordering::Relaxed),
        2,
        "a record's items are counted"
    );
    // The exporter taking one makes room again.
    let mut rx = q.take_receiver().unwrap();
    let r = rx.try_recv().unwrap();
    q.taken(&r);
    q.push(Record(big));
    assert_eq!(q.dropped.load(Ordering::Relaxed), 2);
}

#[test]
fn the_queue_is_bounded_by_records() {
    let q = ExportQueue::<Record>::default();
    for _ in 0..QUEUE + 3 {
        q.push(Record(1));
    }
    assert_eq!(q.dropped.load(Ordering::Relaxed), 6);
    assert_eq!(q.pending.load(Ordering::Relaxed), QUEUE);
}
