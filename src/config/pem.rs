//! The certificates of a PEM text (`ca-file`), parsed without I/O: lowering reads the file
//! through its inputs and the model carries what was parsed, so the upstream that trusts them
//! never reads the file again.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Every `CERTIFICATE` block of `pem` (other blocks are skipped); at least one. `source` names
/// the file in messages.
pub(super) fn certificates(
    pem: &[u8],
    source: &Path,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM in `{}`: {e}", source.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in `{}`", source.display()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_taken_and_other_blocks_skipped() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".to_string()]).unwrap();
        // A bundle as people write them: a key in the middle, comments around.
        let pem = format!(
            "# bundle\n{}{}{}",
            a.cert.pem(),
            a.signing_key.serialize_pem(),
            b.cert.pem()
        );
        let certs = certificates(pem.as_bytes(), Path::new("ca.pem")).unwrap();
        let ders: Vec<&[u8]> = certs.iter().map(|c| c.as_ref()).collect();
        assert_eq!(ders, [a.cert.der().as_ref(), b.cert.der().as_ref()]);
        let only_key = a.signing_key.serialize_pem();
        let err = certificates(only_key.as_bytes(), Path::new("ca.pem")).unwrap_err();
        assert_eq!(err, "no certificate in `ca.pem`");
    }
}
