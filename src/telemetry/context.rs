//! Trace context: the W3C `traceparent` (and `tracestate`) read from a client and written to
//! upstreams, AWS X-Ray's `X-Amzn-Trace-Id`, and the sampling decision, made once per request
//! and carried in the flags of every header strangle sends.
//!
//! A client's context is continued only when the config trusts it (`trust-incoming`): otherwise
//! any client could pick the trace an upstream's spans join, or force every request to be
//! sampled. An untrusted context is kept as a link on the server span, so the two traces can
//! still be joined by someone looking. Nothing here allocates: ids are bytes, headers are
//! formatted into fixed-size arrays.

use rand::Rng;

/// A 16-byte trace id, never all zeros.
pub type TraceId = [u8; 16];
/// An 8-byte span id, never all zeros.
pub type SpanId = [u8; 8];

/// The length of a version-00 `traceparent`: `00-` 32 hex `-` 16 hex `-` 2 hex.
pub const TRACEPARENT_LEN: usize = 55;

/// What the config says about tracing, for the request path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TracePolicy {
    /// Sample when the trace id's random bits fall below this (`sample-ratio` of 2^63).
    bound: u64,
    /// Continue a client's `traceparent` (and `tracestate`).
    pub trust_incoming: bool,
    /// Propagate W3C trace context (`traceparent`).
    pub tracecontext: bool,
    /// Propagate X-Ray's header too; trace ids then start with the time, as X-Ray requires.
    pub xray: bool,
}

impl TracePolicy {
    pub fn new(sample_ratio: f64, trust_incoming: bool, xray: bool) -> TracePolicy {
        TracePolicy::propagating(sample_ratio, trust_incoming, true, xray)
    }

    /// The policy with the propagators chosen (`propagate = [...]`).
    pub fn propagating(
        sample_ratio: f64,
        trust_incoming: bool,
        tracecontext: bool,
        xray: bool,
    ) -> TracePolicy {
        let ratio = sample_ratio.clamp(0.0, 1.0);
        // 2^63 at 1.0 is above every value the id can give (63 bits), so all are sampled.
        let bound = (ratio * (1u64 << 63) as f64) as u64;
        TracePolicy {
            bound,
            trust_incoming,
            tracecontext,
            xray,
        }
    }

    /// Whether a new trace with this id is sampled: the id's last 8 bytes are random in every
    /// generator (X-Ray's puts the time in the first 4), so the decision is the same wherever
    /// it is made from the same id.
    fn samples(&self, id: &TraceId) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&id[8..]);
        (u64::from_be_bytes(low) >> 1) < self.bound
    }
}

/// A span's identity as it travels: trace id, span id, and the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

/// One request's trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTrace {
    /// The server span (this request, as strangle served it).
    pub server: SpanContext,
    /// The client span (the call to the upstream): its id is the parent strangle names to the
    /// upstream.
    pub upstream_span: SpanId,
    /// The remote parent of the server span: a trusted client's span.
    pub parent: Option<SpanId>,
    /// An untrusted client's context: linked from the server span, not continued.
    pub link: Option<SpanContext>,
}

impl RequestTrace {
    /// The context for a request that brought `traceparent` (the raw header value, if one).
    pub fn start(policy: &TracePolicy, traceparent: Option<&[u8]>) -> RequestTrace {
        let incoming = traceparent.and_then(parse_traceparent);
        let mut rng = rand::rng();
        let upstream_span = span_id(&mut rng);
        let span = span_id(&mut rng);
        match incoming {
            Some(parent) if policy.trust_incoming => RequestTrace {
                server: SpanContext {
                    trace_id: parent.trace_id,
                    span_id: span,
                    // Parent-based: the client's decision travels on.
                    sampled: parent.sampled,
                },
                upstream_span,
                parent: Some(parent.span_id),
                link: None,
            },
            link => {
                let trace_id = trace_id(&mut rng, policy.xray);
                RequestTrace {
                    server: SpanContext {
                        trace_id,
                        span_id: span,
                        sampled: policy.samples(&trace_id),
                    },
                    upstream_span,
                    parent: None,
                    link,
                }
            }
        }
    }

    /// The context of a shadow copy of this (sampled) request: the same trace, a server span
    /// of its own under this request's, and its own client span.
    pub fn shadow(&self) -> RequestTrace {
        let mut rng = rand::rng();
        RequestTrace {
            server: SpanContext {
                span_id: span_id(&mut rng),
                ..self.server
            },
            upstream_span: span_id(&mut rng),
            parent: Some(self.server.span_id),
            link: None,
        }
    }

    /// The context the upstream continues: this trace, the client span as its parent.
    pub fn upstream(&self) -> SpanContext {
        SpanContext {
            span_id: self.upstream_span,
            ..self.server
        }
    }

    /// The `traceparent` for the upstream.
    pub fn traceparent(&self) -> [u8; TRACEPARENT_LEN] {
        format_traceparent(&self.upstream())
    }

    /// X-Ray's `X-Amzn-Trace-Id` for the upstream: `Root=1-{8 hex}-{24 hex};Parent={16 hex};
    /// Sampled={0|1}`.
    pub fn xray(&self) -> [u8; XRAY_LEN] {
        let up = self.upstream();
        let mut out = [0u8; XRAY_LEN];
        let mut w = Writer(&mut out, 0);
        w.put(b"Root=1-");
        w.hex(&up.trace_id[..4]);
        w.put(b"-");
        w.hex(&up.trace_id[4..]);
        w.put(b";Parent=");
        w.hex(&up.span_id);
        w.put(if up.sampled {
            b";Sampled=1"
        } else {
            b";Sampled=0"
        });
        out
    }
}

/// The length of the `X-Amzn-Trace-Id` value strangle sends.
pub const XRAY_LEN: usize = 7 + 8 + 1 + 24 + 8 + 16 + 10;

struct Writer<'a>(&'a mut [u8], usize);

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        self.0[self.1..self.1 + b.len()].copy_from_slice(b);
        self.1 += b.len();
    }

    fn hex(&mut self, bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for &b in bytes {
            self.0[self.1] = HEX[usize::from(b >> 4)];
            self.0[self.1 + 1] = HEX[usize::from(b & 0xf)];
            self.1 += 2;
        }
    }
}

/// `00-{trace id}-{span id}-{flags}`.
pub fn format_traceparent(c: &SpanContext) -> [u8; TRACEPARENT_LEN] {
    let mut out = [0u8; TRACEPARENT_LEN];
    let mut w = Writer(&mut out, 0);
    w.put(b"00-");
    w.hex(&c.trace_id);
    w.put(b"-");
    w.hex(&c.span_id);
    w.put(if c.sampled { b"-01" } else { b"-00" });
    out
}

/// Reads a `traceparent` (W3C Trace Context, level 1): `None` for anything invalid, which then
/// counts as no context at all, as the specification says. Version `00` must be exactly 55
/// bytes; a later version may carry more fields after a `-`, which are ignored; `ff` is
/// invalid. Hex must be lower case; an all-zero trace or span id is invalid.
pub fn parse_traceparent(v: &[u8]) -> Option<SpanContext> {
    if v.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != TRACEPARENT_LEN) {
        return None;
    }
    if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span_id = [0u8; 8];
    for (i, b) in span_id.iter_mut().enumerate() {
        *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&v[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

fn span_id(rng: &mut impl Rng) -> SpanId {
    loop {
        let id: SpanId = rng.random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// A new trace id: random, or with X-Ray propagation the Unix time in its first 4 bytes (X-Ray
/// refuses a trace whose id says it is older than 30 days).
fn trace_id(rng: &mut impl Rng, xray: bool) -> TraceId {
    loop {
        let mut id: TraceId = rng.random();
        if xray {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            id[..4].copy_from_slice(&(now as u32).to_be_bytes());
        }
        if id != [0; 16] {
            return id;
        }
    }
}

#[cfg(test)]
mod tests;
