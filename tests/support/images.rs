//! The local test images (`caravan/busybox:test`, `caravan/demo-web:v1|v2`), built by
//! `hack/build-test-image.sh` from Debian's busybox-static with no registry involved.

use std::path::Path;
use std::sync::OnceLock;

pub const BUSYBOX: &str = "caravan/busybox:test";
pub const DEMO_WEB: &str = "caravan/demo-web:v1";

/// Builds the test images once per test binary (quick when they are up to date). Docker must
/// answer: a test that needs the images fails, it never skips, when it does not.
pub fn ensure() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/build-test-image.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({}): {}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = built {
        panic!("the docker tests need the Docker engine and the test images: {e}");
    }
}
