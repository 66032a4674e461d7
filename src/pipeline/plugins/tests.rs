use super::*;

/// Reads every request and answer body up to 1 MiB and appends `!`.
#[derive(Debug)]
struct Bang;

impl Plugin for Bang {
    fn request_body_use(&self, _req: &RequestHead<'_>) -> BodyUse {
        BodyUse::Read(1 << 20)
    }
    fn request_body(&self, _req: &RequestHead<'_>, body: &mut Vec<u8>) {
        body.push(b'!');
    }
    fn response_body_use(&self, _answer: &BodyHead<'_>) -> BodyUse {
        BodyUse::Read(1 << 20)
    }
    fn response_body(&self, _answer: &BodyHead<'_>, body: &mut Vec<u8>) {
        body.push(b'!');
    }
}

fn chain() -> Arc<[Arc<dyn Plugin>]> {
    Arc::from(vec![Arc::new(Bang) as Arc<dyn Plugin>])
}

fn forward() -> Forward {
    Forward {
        new: true,
        path: "/a".into(),
        headers: HeaderMap::new(),
    }
}

#[test]
fn a_body_is_held_until_whole_and_one_over_the_limit_passes_as_it_came() {
    let f = forward();
    let mut held = hold_request_body(&chain(), &Method::POST, &f, Some(4)).unwrap();
    let mut piece = Some(Bytes::from_static(b"ab"));
    held.pass(&mut piece, false).unwrap();
    assert_eq!(piece, None, "held");
    assert_eq!(held_bytes(), 2);
    let mut piece = Some(Bytes::from_static(b"cd"));
    held.pass(&mut piece, true).unwrap();
    assert_eq!(piece.as_deref(), Some(&b"abcd!"[..]));
    assert_eq!(held_bytes(), 0, "released once made");
    // Declared larger than any plugin reads: never held, its length kept.
    assert!(hold_request_body(&chain(), &Method::POST, &f, Some(2 << 20)).is_none());
    // Larger than said (chunked): what was held and the rest pass as they came.
    let mut held = hold_body(&chain(), StatusCode::OK, StatusCode::OK, &HeaderMap::new()).unwrap();
    let mut piece = Some(Bytes::from(vec![b'x'; 1 << 19]));
    held.pass(&mut piece, false).unwrap();
    let mut piece = Some(Bytes::from(vec![b'y'; 1 << 20]));
    held.pass(&mut piece, false).unwrap();
    assert_eq!(piece.as_ref().map(Bytes::len), Some(3 << 19));
    assert_eq!(held_bytes(), 0);
    let mut rest = Some(Bytes::from_static(b"z"));
    held.pass(&mut rest, true).unwrap();
    assert_eq!(rest.as_deref(), Some(&b"z"[..]));
}

#[test]
fn past_the_budget_a_body_is_refused_never_passed_on_unmade() {
    let f = forward();
    let mut held = hold_request_body(&chain(), &Method::POST, &f, None).unwrap();
    // Every other request's held bytes, standing in: all but 10 of the budget.
    HELD.fetch_add(HELD_BUDGET - 10, Ordering::Relaxed);
    let mut piece = Some(Bytes::from_static(b"0123456789"));
    held.pass(&mut piece, false).unwrap();
    let mut piece = Some(Bytes::from_static(b"x"));
    assert_eq!(held.pass(&mut piece, false), Err(BudgetSpent));
    assert_eq!(
        hold_request_body(&chain(), &Method::POST, &f, None)
            .unwrap()
            .whole(b"abc"),
        Err(BudgetSpent)
    );
    HELD.fetch_sub(HELD_BUDGET - 10, Ordering::Relaxed);
    // A body dropped unfinished gives its bytes back.
    drop(held);
    assert_eq!(held_bytes(), 0);
}
