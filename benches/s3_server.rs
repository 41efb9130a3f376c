//! The tests' S3 server (tests/e2e/common/s3.rs: s3s + s3s-fs with its own ListObjectsV2) serving a
//! folder, for `benches/s3_vs_local.py`: each subfolder of `--root` is a bucket. Prints one JSON
//! line with the endpoint and credentials, then serves until killed.
//!
//! `s3_server --root DIR [--port N] [--stock-listing]`; `--stock-listing` answers listings with
//! s3s-fs's own code (the whole bucket per page), to compare. `cargo bench` appends `--bench`:
//! it is ignored, and without `--root` the binary exits at once.

#[path = "../tests/e2e/common/s3.rs"]
mod s3;

use std::path::PathBuf;

fn main() {
    let (mut root, mut port, mut listing) = (None, 0u16, s3::Listing::Walk);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--root" => root = args.next().map(PathBuf::from),
            "--port" => port = args.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| usage("--port wants a number")),
            "--stock-listing" => listing = s3::Listing::Stock,
            "--bench" => {}
            other => usage(&format!("unknown argument `{other}`")),
        }
    }
    let Some(root) = root else {
        // A plain `cargo bench` runs this too: nothing to serve, and nothing failed.
        eprintln!("s3_server: no --root, nothing to serve (it is the server of benches/s3_vs_local.py)\n{USAGE}");
        return;
    };
    let server = s3::S3Server::serve_folder(&root, port, listing).unwrap_or_else(|e| {
        eprintln!("s3_server: cannot serve {}: {e}", root.display());
        std::process::exit(1)
    });
    let ready = serde_json::json!({
        "endpoint": server.endpoint,
        "access_key": s3::ACCESS_KEY,
        "secret_key": s3::SECRET_KEY,
        "listing": format!("{listing:?}"),
    });
    println!("{ready}");
    loop {
        std::thread::park();
    }
}

const USAGE: &str = "usage: s3_server --root DIR [--port N] [--stock-listing]";

fn usage(problem: &str) -> ! {
    eprintln!("s3_server: {problem}\n{USAGE}");
    std::process::exit(2)
}
