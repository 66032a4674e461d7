//! The certificates of a PEM text (`ca-file`), parsed without I/O: lowering reads the file
//! through its inputs and the model carries what was parsed, so the upstream that trusts them
//! never reads the file again.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Every `CERTIFICATE` block of `pem` (other blocks are skipped); at least one. `source` names
/// the file in messages.
pub fn certificates(pem: &[u8], source: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM in `{}`: {e}", source.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in `{}`", source.display()));
    }
    Ok(certs)
}
