use super::*;

#[test]
fn credentials_in_a_query_lose_their_values_and_keep_their_names() {
    let extra = ["session".to_string()];
    assert_eq!(query("a=1&b=2", &extra), "a=1&b=2");
    assert_eq!(
        query("page=2&access_token=abc&Session=s3&flag", &extra),
        "page=2&access_token=[redacted]&Session=[redacted]&flag"
    );
    // Percent-encoded and `+`-spaced names are the same parameter to the application.
    assert_eq!(
        query("%74oken=abc&api%5Fkey=k", &[]),
        "%74oken=[redacted]&api%5Fkey=[redacted]"
    );
    assert_eq!(
        query("X-Amz-Signature=f00&X-Amz-Date=1", &[]),
        "X-Amz-Signature=[redacted]&X-Amz-Date=1"
    );
    // Repeated, empty and valueless parameters.
    assert_eq!(
        query("token=a&token=b&=x&&", &[]),
        "token=[redacted]&token=[redacted]&=x&&"
    );
    assert_eq!(query("", &[]), "");
}
