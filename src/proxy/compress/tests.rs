use std::io::Read;

use super::*;

fn accept(v: &str) -> Option<Coding> {
    negotiate(Some(&HeaderValue::from_str(v).unwrap()))
}

#[test]
fn the_coding_the_client_weighs_highest_is_chosen_and_q0_never() {
    assert_eq!(accept("gzip"), Some(Coding::Gzip));
    assert_eq!(
        accept("gzip, deflate, br, zstd"),
        Some(Coding::Brotli),
        "a tie: brotli"
    );
    assert_eq!(accept("gzip;q=0"), None);
    assert_eq!(accept("br;q=0, gzip"), Some(Coding::Gzip));
    assert_eq!(accept("gzip;q=0, identity"), None);
    assert_eq!(accept("zstd;q=0.1, gzip;q=1"), Some(Coding::Gzip));
    assert_eq!(accept("*"), Some(Coding::Brotli));
    assert_eq!(accept("*;q=0, gzip;q=0.5"), Some(Coding::Gzip));
    assert_eq!(accept("identity"), None);
    assert_eq!(accept("GZIP;Q=0.5"), Some(Coding::Gzip));
    assert_eq!(
        accept("gzip;q=2"),
        None,
        "an out-of-range weight counts as 0"
    );
    assert_eq!(
        accept(&format!("gzip,,{}", "a".repeat(30_000))),
        Some(Coding::Gzip)
    );
    assert_eq!(negotiate(None), None);
}

/// `data` through a fresh encoder in pieces of `piece` bytes.
fn encoded(coding: Coding, data: &[u8], piece: usize) -> Vec<u8> {
    let mut e = Encoder::new(coding, 5).unwrap();
    let mut out = Vec::new();
    for chunk in data.chunks(piece) {
        out.extend(e.encode(chunk, false).unwrap());
    }
    out.extend(e.encode(b"", true).unwrap());
    out
}

#[test]
fn every_coding_decodes_to_the_bytes_that_went_in_whatever_the_pieces() {
    let data: Vec<u8> = (0..400_000u32)
        .flat_map(|i| format!("{i},").into_bytes())
        .collect();
    for piece in [1 << 20, 16_384, 7] {
        let data = &data[..if piece == 7 { 20_000 } else { data.len() }];
        let gz = encoded(Coding::Gzip, data, piece);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data, "gzip, pieces of {piece}");
        let br = encoded(Coding::Brotli, data, piece);
        let mut back = Vec::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data, "brotli, pieces of {piece}");
        let zs = encoded(Coding::Zstd, data, piece);
        assert_eq!(
            zstd::decode_all(&zs[..]).unwrap(),
            data,
            "zstd, pieces of {piece}"
        );
        assert!(
            gz.len() < data.len() / 2 && br.len() < data.len() / 2 && zs.len() < data.len() / 2
        );
    }
    // An empty body is a whole (empty) stream too.
    let br = encoded(Coding::Brotli, b"", 1);
    let mut back = Vec::new();
    brotli::Decompressor::new(&br[..], 4096)
        .read_to_end(&mut back)
        .unwrap();
    assert!(back.is_empty());
}
