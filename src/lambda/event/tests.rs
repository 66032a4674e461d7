use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn request<'a>(h: &'a HeaderMap, body: &'a [u8], query: &'a str) -> Request<'a> {
    Request {
        method: "POST",
        path: "/bookings/42",
        query,
        headers: h,
        body,
        source_ip: Some("10.1.2.3".parse().unwrap()),
        request_id: "req-1",
        protocol: "HTTP/1.1",
        route_path: "/bookings",
        now: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_318_000),
        claims: None,
    }
}

#[test]
fn v2_events_look_like_api_gateway_http_apis() {
    let h = headers(&[
        ("host", "api.example.com"),
        ("x-tag", "a"),
        ("x-tag", "b"),
        ("cookie", "a=1; b=2"),
        ("content-type", "application/json"),
        ("user-agent", "curl/8"),
        ("x-amz-date", "spoofed"),
    ]);
    let req = request(&h, br#"{"seat":"1A"}"#, "q=x%20y&q=z&n=1");
    let v: Value = serde_json::from_slice(&encode(Payload::ApigwV2, &req)).unwrap();
    assert_eq!(v["version"], "2.0");
    assert_eq!(v["rawPath"], "/bookings/42");
    assert_eq!(v["rawQueryString"], "q=x%20y&q=z&n=1");
    assert_eq!(v["cookies"], serde_json::json!(["a=1", "b=2"]));
    assert_eq!(v["headers"]["x-tag"], "a,b");
    assert!(v["headers"].get("cookie").is_none());
    assert!(v["headers"].get("x-amz-date").is_none());
    assert_eq!(v["queryStringParameters"]["q"], "x y,z");
    assert_eq!(v["requestContext"]["http"]["method"], "POST");
    assert_eq!(v["requestContext"]["http"]["sourceIp"], "10.1.2.3");
    assert_eq!(v["requestContext"]["http"]["userAgent"], "curl/8");
    assert_eq!(v["requestContext"]["domainPrefix"], "api");
    assert_eq!(v["requestContext"]["time"], "28/Nov/2025:08:20:00 +0000");
    assert_eq!(v["requestContext"]["timeEpoch"], 1_764_318_000_000u64);
    assert_eq!(v["body"], r#"{"seat":"1A"}"#);
    assert_eq!(v["isBase64Encoded"], false);
}

#[test]
fn binary_bodies_are_base64() {
    let h = headers(&[("content-type", "application/octet-stream")]);
    let body = [0u8, 159, 146, 150, 255];
    let req = request(&h, &body, "");
    for format in [Payload::ApigwV2, Payload::ApigwV1, Payload::Alb] {
        let v: Value = serde_json::from_slice(&encode(format, &req)).unwrap();
        assert_eq!(v["isBase64Encoded"], true, "{format:?}");
        assert_eq!(B64.decode(v["body"].as_str().unwrap()).unwrap(), body);
    }
}

#[test]
fn v1_and_alb_events_have_their_own_shapes() {
    let h = headers(&[("x-tag", "a"), ("x-tag", "b"), ("host", "h")]);
    let req = request(&h, b"", "q=1&q=2&r=%2F");
    let v: Value = serde_json::from_slice(&encode(Payload::ApigwV1, &req)).unwrap();
    assert_eq!(v["httpMethod"], "POST");
    assert_eq!(v["resource"], "/bookings/{proxy+}");
    assert_eq!(v["headers"]["x-tag"], "b");
    assert_eq!(
        v["multiValueHeaders"]["x-tag"],
        serde_json::json!(["a", "b"])
    );
    assert_eq!(v["queryStringParameters"]["q"], "2");
    assert_eq!(
        v["multiValueQueryStringParameters"]["q"],
        serde_json::json!(["1", "2"])
    );
    assert_eq!(v["queryStringParameters"]["r"], "/");
    assert_eq!(v["requestContext"]["identity"]["sourceIp"], "10.1.2.3");
    assert!(v["body"].is_null());

    let v: Value = serde_json::from_slice(&encode(Payload::Alb, &req)).unwrap();
    assert!(v["requestContext"]["elb"]["targetGroupArn"]
        .as_str()
        .unwrap()
        .starts_with("arn:aws:elasticloadbalancing:"));
    assert_eq!(v["queryStringParameters"]["r"], "%2F");
    assert_eq!(v["body"], "");
}

#[test]
fn structured_responses_decode_with_cookies_and_multi_value_headers() {
    let payload = br#"{"statusCode": 201, "headers": {"content-type": "text/plain", "x-n": 5},
        "multiValueHeaders": {"x-m": ["1", "2"]}, "cookies": ["a=1; Path=/", "b=2"],
        "body": "made", "isBase64Encoded": false}"#;
    let r = decode(Payload::ApigwV2, payload).unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.body, Bytes::from("made"));
    let has = |k: &str, v: &str| r.headers.iter().any(|(n, val)| n == k && val == v);
    assert!(
        has("content-type", "text/plain") && has("x-n", "5") && has("x-m", "1") && has("x-m", "2")
    );
    assert!(has("set-cookie", "a=1; Path=/") && has("set-cookie", "b=2"));
}

#[test]
fn base64_and_inferred_responses() {
    let r = decode(
        Payload::ApigwV2,
        br#"{"statusCode": 200, "body": "AJ+SlqX/", "isBase64Encoded": true}"#,
    )
    .unwrap();
    assert_eq!(&r.body[..], &[0u8, 159, 146, 150, 165, 255][..]);
    let r = decode(Payload::ApigwV2, br#"{"flights": ["LH123"]}"#).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers,
        vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))]
    );
    assert_eq!(r.body, Bytes::from_static(br#"{"flights": ["LH123"]}"#));
    assert!(decode(Payload::ApigwV1, br#"{"flights": []}"#).is_err());
    assert!(decode(Payload::ApigwV2, b"not json").is_err());
    assert!(decode(Payload::ApigwV2, br#"{"statusCode": 999}"#).is_err());
}

#[test]
fn verified_claims_ride_in_the_authorizer_context() {
    let h = headers(&[]);
    let mut req = request(&h, b"", "");
    let claims: serde_json::Map<String, Value> =
        serde_json::from_str(r#"{"sub":"u-1","scope":"bookings:read bookings:write"}"#).unwrap();
    req.claims = Some(&claims);
    let v: Value = serde_json::from_slice(&encode(Payload::ApigwV2, &req)).unwrap();
    assert_eq!(
        v["requestContext"]["authorizer"]["jwt"]["claims"]["sub"],
        "u-1"
    );
    assert_eq!(
        v["requestContext"]["authorizer"]["jwt"]["scopes"],
        serde_json::json!(["bookings:read", "bookings:write"])
    );
    let v: Value = serde_json::from_slice(&encode(Payload::ApigwV1, &req)).unwrap();
    assert_eq!(v["requestContext"]["authorizer"]["claims"]["sub"], "u-1");
}

#[test]
fn informational_status_codes_are_refused() {
    for code in ["100", "101", "103", "199", "600", "0"] {
        let payload = format!(r#"{{"statusCode": {code}, "body": "x"}}"#);
        assert!(
            decode(Payload::ApigwV2, payload.as_bytes()).is_err(),
            "{code}"
        );
    }
    assert!(decode(Payload::ApigwV2, br#"{"statusCode": 200}"#).is_ok());
    assert!(decode(Payload::ApigwV1, br#"{"statusCode": "599"}"#).is_ok());
}

#[test]
fn many_multi_value_headers_decode_in_linear_time_and_are_capped() {
    let values: Vec<String> = (0..20_000).map(|i| format!("\"v{i}\"")).collect();
    let payload = format!(
        r#"{{"statusCode": 200, "multiValueHeaders": {{"x-a": [{}]}}}}"#,
        values.join(",")
    );
    // Decoding stops at the cap (quadratic de-duplication of all 20,000 took 7.9 s before).
    let err = decode(Payload::ApigwV1, payload.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("256"), "{err}");
    // Pairs in both `headers` and `multiValueHeaders` are sent once; the cap is not hit by them.
    let dup =
        r#"{"statusCode": 200, "headers": {"x-a": "1"}, "multiValueHeaders": {"x-a": ["1", "2"]}}"#;
    let r = decode(Payload::ApigwV1, dup.as_bytes()).unwrap();
    let xa: Vec<_> = r.headers.iter().filter(|(k, _)| k == "x-a").collect();
    assert_eq!(xa.len(), 2);
    let big = format!(
        r#"{{"statusCode": 200, "headers": {{"x-big": "{}"}}}}"#,
        "a".repeat(70_000)
    );
    assert!(decode(Payload::ApigwV2, big.as_bytes()).is_err());
}
