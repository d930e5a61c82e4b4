//! The self-signed certificate of the embedded default configuration.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

/// Loads `cert.pem`/`key.pem` from `dir`, making them first if they do not exist.
pub fn self_signed(hostname: &str, dir: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() || !key.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let names = vec![hostname.to_owned(), "localhost".to_owned()];
        let made = rcgen::generate_simple_self_signed(names)
            .context("cannot make a self-signed certificate")?;
        write_private(&key, made.signing_key.serialize_pem().as_bytes())?;
        std::fs::write(&cert, made.cert.pem())
            .with_context(|| format!("cannot write {}", cert.display()))?;
        println!("mta: made a self-signed certificate in {}", cert.display());
    }
    Ok(smtp_server::tls::load_pem_files(&cert, &key)?)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}
