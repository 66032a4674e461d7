//! Answers compressed for clients that accept it (`[server] compression`, a route's `compress =
//! false` to opt out): Pingora's compression context does the negotiation (gzip, brotli, zstd,
//! by the client's `Accept-Encoding`), `Vary: Accept-Encoding`, and never touches a body that
//! already has a content coding; strangle chooses which answers are worth it: a body of a listed
//! type, at least `min-size` when its length is known, not a range, not `no-transform`, not to
//! HEAD. It runs after the side's body plugins (they see the body as the side sent it) and after
//! the shadow capture (copies are compared uncompressed).

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::protocols::http::compression::ResponseCompressionCtx;
use pingora::proxy::Session;

use super::respond::no_body;
use super::Ctx;

/// Starts compressing the answer `resp` heads, when it is worth it: its head is made the
/// compressed one's (`Content-Encoding`, `Vary`, no length; chunked on HTTP/1.1 unless the
/// caller frames the `whole` body itself), and `Ctx::compress` takes its body.
pub(super) fn start(session: &Session, ctx: &mut Ctx, resp: &mut ResponseHeader, whole: bool) {
    ctx.compress = None;
    let Some(c) = ctx.req.snap.config.server.compression.as_ref() else {
        return;
    };
    let req = session.req_header();
    let worth_it = ctx.req.policy().is_none_or(|p| p.compress)
        && !ctx.drop_body
        && !no_body(resp.status, &req.method)
        && resp.status != http::StatusCode::PARTIAL_CONTENT
        && !resp.headers.contains_key(header::CONTENT_RANGE)
        && !resp.headers.contains_key(header::CONTENT_ENCODING)
        && !resp.headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("no-transform"))
        })
        && resp
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| c.takes(ct))
        && resp
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_none_or(|n| n >= c.min_size);
    if !worth_it {
        return;
    }
    let mut z = ResponseCompressionCtx::new(c.level, false, false);
    z.request_filter(req);
    z.response_header_filter(resp, false);
    if !resp.headers.contains_key(header::CONTENT_ENCODING) {
        // The client takes none of them (the answer still varies on what it accepts).
        return;
    }
    if !whole && !session.is_http2() && req.version == http::Version::HTTP_11 {
        resp.remove_header(&header::TRANSFER_ENCODING);
        let _ = resp.insert_header(header::TRANSFER_ENCODING, "chunked");
    }
    ctx.compress = Some(Box::new(z));
}

/// A piece of the answer's body (`end`: the last) through the compressor, when there is one.
pub(super) fn body(ctx: &mut Ctx, data: &mut Option<Bytes>, end: bool) {
    if let Some(z) = ctx.compress.as_mut() {
        if data.is_some() || end {
            if let Some(out) = z.response_body_filter(data.as_ref(), end) {
                // Nothing out yet (the encoder is collecting): nothing to write.
                *data = (!out.is_empty() || end).then_some(out);
            }
        }
    }
}
