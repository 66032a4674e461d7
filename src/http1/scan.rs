//! The request-head scanner: fed the bytes of a connection as they arrive, it finds where a
//! request head ends (the blank line) and whether its request line is valid HTTP/1, across
//! reads split anywhere. It never buffers: it keeps the last three bytes and a few flags.

/// Where the scan of one request head stands.
#[derive(Debug, Default, Clone)]
pub(crate) struct HeadScan {
    /// The blank line that ends the head was seen.
    done: bool,
    /// The last bytes seen, to find `\r\n\r\n` split across reads.
    tail: [u8; 3],
    /// A byte other than CR or LF was seen in this head. The parser skips blank lines before a
    /// request line (RFC 9112 section 2.2), so they must not end the head here either.
    started: bool,
    /// The request line ended (its `\n` was seen), and the spaces in it so far.
    line_done: bool,
    line_spaces: u8,
    /// The last read ended on a CR inside the request line: fine if the next starts with LF.
    pending_cr: bool,
    /// The request line had a byte or a space RFC 9112 does not allow.
    bad_line: bool,
}

impl HeadScan {
    /// Scans newly read bytes; returns whether the head is now complete. Bytes after the end
    /// of the head (a body, a pipelined request) are not looked at.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> bool {
        if self.done {
            return true;
        }
        if !self.started {
            match data.iter().position(|&b| b != b'\r' && b != b'\n') {
                Some(i) => {
                    self.started = true;
                    data = &data[i..];
                }
                // Only blank lines so far: the head has not begun.
                None => return false,
            }
        }
        if !self.line_done {
            self.check_request_line(data);
        }
        // `\r\n\r\n`, or a bare `\n\n`, which httparse also accepts: look at each `\n` (memchr,
        // vectorised) and the two bytes before it, which may have come in an earlier read.
        let before = |i: usize, back: usize| -> u8 {
            if i >= back {
                data[i - back]
            } else {
                self.tail[3 - (back - i)]
            }
        };
        for i in memchr::memchr_iter(b'\n', data) {
            let prev = before(i, 1);
            if prev == b'\n' || (prev == b'\r' && before(i, 2) == b'\n') {
                self.done = true;
                return true;
            }
        }
        let n = data.len();
        self.tail = [before(n, 3), before(n, 2), before(n, 1)];
        false
    }

    /// Whether the head's first non-blank byte has arrived.
    #[cfg(test)]
    pub(crate) fn started(&self) -> bool {
        self.started
    }

    /// Whether the blank line that ends the head was seen.
    pub(crate) fn done(&self) -> bool {
        self.done
    }

    /// Whether the request line so far has a byte or a space HTTP/1 does not allow.
    pub(crate) fn bad_line(&self) -> bool {
        self.bad_line
    }

    /// Checks the request line's bytes: `METHOD SP TARGET SP VERSION`, no other spaces, no
    /// control bytes but the final CR, none of `"<>` (which httparse refuses and Pingora
    /// would escape).
    fn check_request_line(&mut self, data: &[u8]) {
        if std::mem::take(&mut self.pending_cr) && data.first() != Some(&b'\n') {
            // The CR that ended the last read was not the line's end after all.
            self.bad_line = true;
        }
        let end = memchr::memchr(b'\n', data);
        let line = &data[..end.unwrap_or(data.len())];
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == line.len();
            match b {
                b' ' => self.line_spaces = self.line_spaces.saturating_add(1),
                b'"' | b'<' | b'>' | 0x7f => self.bad_line = true,
                // The CR before the line's LF; when the read ends on it, the next read says.
                b'\r' if last && end.is_some() => {}
                b'\r' if last => self.pending_cr = true,
                b if b < 0x20 => self.bad_line = true,
                _ => {}
            }
        }
        if self.line_spaces > 2 {
            self.bad_line = true;
        }
        if end.is_some() {
            self.line_done = true;
        }
    }
}

/// Whether a complete request head (at the start of `head`) is one the HTTP/1 fast path serves:
/// an origin-form `HTTP/1.0` or `HTTP/1.1` request with no `Upgrade`, and not `CONNECT` or the
/// HTTP/2 preface. A body (in any framing) and `Expect` are the fast path's too: the session's
/// parser frames the body, as it does for Pingora's proxy. Anything else, or anything this
/// quick look is unsure of (blank lines before the request line, folded header lines, a head
/// not all here), is `false`: Pingora's proxy serves it. A `true` is never a verdict on
/// validity: the session's parser still reads the head.
pub(crate) fn plain_head(head: &[u8]) -> bool {
    let Some(line_end) = memchr::memchr(b'\n', head) else {
        return false;
    };
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    if method.is_empty()
        || method == b"CONNECT"
        || method == b"PRI"
        || target.first() != Some(&b'/')
        || !(version == b"HTTP/1.1" || version == b"HTTP/1.0")
    {
        return false;
    }
    let mut rest = &head[line_end + 1..];
    loop {
        let Some(end) = memchr::memchr(b'\n', rest) else {
            return false;
        };
        let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        rest = &rest[end + 1..];
        if line.is_empty() {
            return true;
        }
        if matches!(line[0], b' ' | b'\t') {
            return false;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return false;
        };
        if line[..colon].eq_ignore_ascii_case(b"upgrade") {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `head` split at every possible point into two reads, and byte by byte, and checks
    /// each way finds the same end and the same verdict on the request line.
    fn scan_every_split(head: &[u8]) -> (bool, bool) {
        let mut whole = HeadScan::default();
        let expect = (whole.feed(head), whole.bad_line());
        for cut in 0..=head.len() {
            let mut s = HeadScan::default();
            let first = s.feed(&head[..cut]);
            let done = first || s.feed(&head[cut..]);
            assert_eq!((done, s.bad_line()), expect, "split at {cut} of {head:?}");
        }
        let mut s = HeadScan::default();
        let mut done = false;
        for b in head {
            done |= s.feed(std::slice::from_ref(b));
        }
        assert_eq!((done, s.bad_line()), expect, "byte by byte: {head:?}");
        expect
    }

    #[test]
    fn a_head_ends_at_its_blank_line_however_the_reads_split_it() {
        assert_eq!(
            scan_every_split(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            (true, false)
        );
        assert_eq!(
            scan_every_split(b"GET / HTTP/1.1\nHost: a\n\n"),
            (true, false)
        );
        assert_eq!(
            scan_every_split(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            (false, false)
        );
    }

    #[test]
    fn blank_lines_before_the_request_line_do_not_end_or_start_a_head() {
        let mut s = HeadScan::default();
        assert!(!s.feed(b"\r\n\r\n\n\n"));
        assert!(!s.started());
        assert!(s.feed(b"GET / HTTP/1.1\r\n\r\n"));
        assert_eq!(
            scan_every_split(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
            (true, false)
        );
    }

    #[test]
    fn bytes_after_the_head_are_not_scanned() {
        let mut s = HeadScan::default();
        assert!(s.feed(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n<>\"\x00\r\n\r\n"));
        assert!(!s.bad_line());
        assert!(s.feed(b"anything"));
    }

    #[test]
    fn a_request_line_with_what_http_forbids_is_bad() {
        for line in [
            &b"GET /a b HTTP/1.1\r\n\r\n"[..],
            b"GET /<script> HTTP/1.1\r\n\r\n",
            b"GET /\"x\" HTTP/1.1\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
            b"GET /\r HTTP/1.1\r\n\r\n",
            b"GET\t/ HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(scan_every_split(line), (true, true), "{line:?}");
        }
    }

    #[test]
    fn the_headers_after_the_request_line_may_have_what_the_line_may_not() {
        assert_eq!(
            scan_every_split(b"GET / HTTP/1.1\r\nUser-Agent: a b c \"d\" <e>\r\n\r\n"),
            (true, false)
        );
    }

    #[test]
    fn a_request_line_split_between_its_cr_and_lf_is_not_malformed() {
        // Found by the split test above: the CR at the end of a read was taken for a control
        // byte inside the line, and such a request got 400.
        let mut s = HeadScan::default();
        assert!(!s.feed(b"GET / HTTP/1.1\r"));
        assert!(!s.bad_line());
        assert!(s.feed(b"\nHost: a\r\n\r\n"));
        assert!(!s.bad_line());
        let mut s = HeadScan::default();
        assert!(!s.feed(b"GET /\r"));
        assert!(!s.feed(b"x HTTP/1.1\r\n"));
        assert!(s.bad_line(), "a CR inside the line stays bad across reads");
    }

    #[test]
    fn a_flood_of_spaces_saturates_instead_of_wrapping() {
        let mut line = b"GET /".to_vec();
        line.extend(std::iter::repeat_n(b' ', 600));
        line.extend_from_slice(b"HTTP/1.1\r\n\r\n");
        let mut s = HeadScan::default();
        assert!(s.feed(&line));
        assert!(s.bad_line());
    }

    #[test]
    fn the_fast_path_takes_origin_form_heads_without_an_upgrade() {
        let plain: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /bookings/1?x=y HTTP/1.0\r\n\r\n",
            b"DELETE /a HTTP/1.1\nHost: a\nContent-Length:  0 \n\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\n",
            // A body, in any framing or spelling, and a client waiting for the go-ahead.
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\ncontent-length: 00\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\ntransfer-encoding: identity\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        ];
        for head in plain {
            assert!(plain_head(head), "{}", String::from_utf8_lossy(head));
        }
        let other: &[&[u8]] = &[
            // Upgrades, tunnels, HTTP/2.
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nupgrade: h2c\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            // Targets that are not origin-form, versions that are not 1.x.
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET /\r\n\r\n",
            // What the quick look is unsure of.
            b"\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
        ];
        for head in other {
            assert!(!plain_head(head), "{}", String::from_utf8_lossy(head));
        }
    }
}
