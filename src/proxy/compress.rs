//! Answers compressed for clients that accept it (`[server] compression`, a route's `compress =
//! false` to opt out): gzip, brotli or zstd, whichever the client's `Accept-Encoding` weighs
//! highest (`q=0` never; brotli, then zstd, then gzip on a tie), with `Vary: Accept-Encoding`
//! and a weakened `ETag`. strangle chooses which answers are worth it: a body of a listed type,
//! at least `min-size` when its length is known, not already encoded, not a range, not
//! `no-transform`; a HEAD gets the head GET would (its `Vary`) but no coding. It runs after the
//! side's body plugins (they see the body as the side sent it) and after the shadow capture
//! (copies are compared uncompressed).

use std::io::Write;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::respond::no_body;
use super::Ctx;

/// A content coding strangle makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip,
    Brotli,
    Zstd,
}

impl Coding {
    fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
        }
    }
}

/// The coding the client weighs highest of those strangle makes (`None`: none acceptable).
/// Malformed entries are skipped; at most 32 entries are read.
fn negotiate(accept: Option<&HeaderValue>) -> Option<Coding> {
    let text = accept?.to_str().ok()?;
    let (mut any, mut best): (Option<f32>, Option<(f32, Coding)>) = (None, None);
    let mut named = [None::<f32>; 3];
    for entry in text.split(',').take(32) {
        let mut parts = entry.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0f32;
        for p in parts {
            if let Some(v) = p
                .trim()
                .strip_prefix("q=")
                .or_else(|| p.trim().strip_prefix("Q="))
            {
                q = v
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|q| (0.0..=1.0).contains(q))
                    .unwrap_or(0.0);
            }
        }
        match name.as_str() {
            "gzip" | "x-gzip" => named[0] = Some(q),
            "br" => named[1] = Some(q),
            "zstd" => named[2] = Some(q),
            "*" => any = Some(q),
            _ => {}
        }
    }
    // Server preference on a tie: brotli, zstd, gzip.
    for (i, coding) in [(1, Coding::Brotli), (2, Coding::Zstd), (0, Coding::Gzip)] {
        let q = named[i].or(any).unwrap_or(0.0);
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, coding));
        }
    }
    best.map(|(_, c)| c)
}

/// A streaming encoder: what it has made so far is taken after each piece; the end finishes
/// the stream (brotli's and zstd's closing blocks, gzip's trailer).
pub(super) enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoder::Gzip(_) => "gzip",
            Encoder::Brotli(_) => "br",
            Encoder::Zstd(_) => "zstd",
        })
    }
}

impl Encoder {
    fn new(coding: Coding, level: u32) -> Option<Encoder> {
        Some(match coding {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            )),
            Coding::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                level,
                22,
            ))),
            Coding::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), level as i32).ok()?)
            }
        })
    }

    /// `input` in; what is out so far (all of it, finished, at the `end`).
    fn encode(&mut self, input: &[u8], end: bool) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => {
                e.write_all(input)?;
                if end {
                    e.try_finish()?;
                }
                Ok(std::mem::take(e.get_mut()))
            }
            Encoder::Brotli(e) => {
                e.write_all(input)?;
                if end {
                    // Replaced by an empty one: `into_inner` writes the closing block.
                    let done = std::mem::replace(
                        e.as_mut(),
                        brotli::CompressorWriter::new(Vec::new(), 0, 1, 10),
                    );
                    return Ok(done.into_inner());
                }
                Ok(std::mem::take(e.get_mut()))
            }
            Encoder::Zstd(e) => {
                e.write_all(input)?;
                if end {
                    e.do_finish()?;
                }
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }
}

/// Starts compressing the answer `resp` heads, when it is worth it: its head is made the
/// compressed one's (`Content-Encoding`, `Vary`, a weak `ETag`, no length; chunked on HTTP/1.1
/// unless the caller frames the `whole` body itself), and `Ctx::compress` takes its body.
pub(super) fn start(session: &Session, ctx: &mut Ctx, resp: &mut ResponseHeader, whole: bool) {
    ctx.compress = None;
    let Some(c) = ctx.req.snap.config.server.compression.as_ref() else {
        return;
    };
    let req = session.req_header();
    let text = |resp: &ResponseHeader, name| {
        resp.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let worth_it = ctx.req.policy().is_none_or(|p| p.compress)
        && !ctx.drop_body
        && !no_body(resp.status, &http::Method::GET)
        && resp.status != http::StatusCode::PARTIAL_CONTENT
        && !resp.headers.contains_key(header::CONTENT_RANGE)
        && !resp.headers.contains_key(header::CONTENT_ENCODING)
        && !resp.headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("no-transform"))
        })
        && text(resp, header::CONTENT_TYPE).is_some_and(|ct| c.takes(&ct))
        && text(resp, header::CONTENT_LENGTH)
            .and_then(|v| v.parse::<u64>().ok())
            .is_none_or(|n| n >= c.min_size);
    if !worth_it {
        return;
    }
    // The answer depends on what the client accepts, whether or not this one is compressed.
    let varies = resp.headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(|t| t.trim_ascii())
            .any(|t| t == b"*" || t.eq_ignore_ascii_case(b"accept-encoding"))
    });
    if !varies {
        let _ = resp.append_header(header::VARY, "Accept-Encoding");
    }
    let Some(coding) = negotiate(req.headers.get(header::ACCEPT_ENCODING)) else {
        return;
    };
    if req.method == http::Method::HEAD {
        return;
    }
    let Some(encoder) = Encoder::new(coding, c.level) else {
        return;
    };
    let _ = resp.insert_header(header::CONTENT_ENCODING, coding.token());
    resp.remove_header(&header::CONTENT_LENGTH);
    if let Some(etag) = text(resp, header::ETAG).filter(|e| !e.starts_with("W/")) {
        let weak = format!("W/{etag}");
        let _ = resp.insert_header(header::ETAG, weak);
    }
    resp.remove_header(&header::TRANSFER_ENCODING);
    if !whole && !session.is_http2() && req.version == http::Version::HTTP_11 {
        let _ = resp.insert_header(header::TRANSFER_ENCODING, "chunked");
    }
    ctx.compress = Some(Box::new(encoder));
}

/// A piece of the answer's body (`end`: the last) through the encoder, when there is one. An
/// encoder that fails (it never does on memory it owns) ends the answer in error rather than
/// pass on a broken stream.
pub(super) fn body(ctx: &mut Ctx, data: &mut Option<Bytes>, end: bool) -> pingora::Result<()> {
    let Some(e) = ctx.compress.as_mut() else {
        return Ok(());
    };
    if data.is_none() && !end {
        return Ok(());
    }
    let input = data.take().unwrap_or_default();
    let out = e.encode(&input, end).map_err(|err| {
        pingora::Error::explain(
            pingora::ErrorType::InternalError,
            format!("compressing: {err}"),
        )
    })?;
    // Nothing out yet (the encoder is collecting): nothing to write.
    *data = (!out.is_empty() || end).then(|| Bytes::from(out));
    Ok(())
}

#[cfg(test)]
mod tests;
