//! `java`: runs `java [jvm_options…] -jar <jar_path> [args…]` or
//! `java [jvm_options…] [-cp <class_path>] <class> [args…]`, isolated exactly like `exec`
//! (cgroup limits, `nobody` unless `user` is set, a mount namespace where allowed).
//!
//! The fingerprint runs `java -version` and reports `driver.java.version`, `driver.java.runtime`
//! and `driver.java.vm`, as Nomad does.

use super::exec::ExecDriver;
use super::process;
use super::{
    Driver, DriverError, ExecOutput, ExecRequest, ExitResult, Fingerprint, TaskConfig, TaskHandle,
    TaskStats, TaskStatus,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub const NAME: &str = "java";
/// How long `java -version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(30);

/// What `java -version` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JavaVersion {
    /// `17.0.15`
    pub version: String,
    /// `OpenJDK Runtime Environment (build 17.0.15+6-Debian-1deb12u1)`
    pub runtime: String,
    /// `OpenJDK 64-Bit Server VM (build 17.0.15+6-Debian-1deb12u1, mixed mode, sharing)`
    pub vm: String,
}

/// Parses the output of `java -version` (printed on stderr):
/// `openjdk version "17.0.15" 2025-04-15`, then the runtime line, then the VM line.
pub fn parse_java_version(output: &str) -> Option<JavaVersion> {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Picked up"))
        .collect();
    let first = lines.iter().position(|l| l.contains(" version "))?;
    let line = lines.get(first)?;
    let version = line
        .split('"')
        .nth(1)
        .map(str::to_string)
        .or_else(|| line.split_whitespace().nth(2).map(str::to_string))?;
    Some(JavaVersion {
        version,
        runtime: lines
            .get(first + 1)
            .map(|s| s.to_string())
            .unwrap_or_default(),
        vm: lines
            .get(first + 2)
            .map(|s| s.to_string())
            .unwrap_or_default(),
    })
}

#[derive(Debug)]
pub struct JavaDriver {
    exec: ExecDriver,
    /// `java` on the agent's PATH (or `$JAVA_HOME/bin/java`).
    java: Option<PathBuf>,
}

impl JavaDriver {
    /// `config` is the plugin block; `cgroup_parent` is passed to the exec isolation and
    /// `java_path` overrides where `java` is found.
    pub fn new(config: BTreeMap<String, serde_json::Value>) -> Self {
        let java = config
            .get("java_path")
            .and_then(|v| v.as_str())
            .map(PathBuf::from)
            .or_else(find_java);
        Self {
            exec: ExecDriver::new(config),
            java,
        }
    }

    async fn version(&self) -> Result<JavaVersion, String> {
        let java = self
            .java
            .clone()
            .ok_or_else(|| "java not found on PATH nor in $JAVA_HOME/bin".to_string())?;
        let output = tokio::time::timeout(
            VERSION_TIMEOUT,
            tokio::process::Command::new(&java)
                .arg("-version")
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| format!("{} -version timed out", java.display()))?
        .map_err(|e| format!("running {} -version: {e}", java.display()))?;
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        if !output.status.success() {
            return Err(format!(
                "{} -version failed ({}): {}",
                java.display(),
                output.status,
                text.trim()
            ));
        }
        parse_java_version(&text)
            .ok_or_else(|| format!("unrecognised `java -version` output: {}", text.trim()))
    }

    /// `java` arguments for the task's config.
    pub fn java_args(task: &TaskConfig) -> Result<Vec<String>, DriverError> {
        let mut argv = task.config_strings("jvm_options")?;
        let jar = task.config_str("jar_path")?.filter(|s| !s.is_empty());
        let class = task.config_str("class")?.filter(|s| !s.is_empty());
        let class_path = task.config_str("class_path")?.filter(|s| !s.is_empty());
        match (jar, class) {
            (Some(jar), None) => {
                if let Some(cp) = class_path {
                    argv.extend(["-cp".to_string(), cp.to_string()]);
                }
                argv.extend(["-jar".to_string(), jar.to_string()]);
            }
            (None, Some(class)) => {
                if let Some(cp) = class_path {
                    argv.extend(["-cp".to_string(), cp.to_string()]);
                }
                argv.push(class.to_string());
            }
            (Some(_), Some(_)) => {
                return Err(DriverError::InvalidConfig(
                    "set either config key jar_path or class, not both".into(),
                ));
            }
            (None, None) => {
                return Err(DriverError::InvalidConfig(
                    "missing config key jar_path or class".into(),
                ));
            }
        }
        argv.extend(task.config_strings("args")?);
        Ok(argv)
    }
}

fn find_java() -> Option<PathBuf> {
    if let Ok(home) = std::env::var("JAVA_HOME") {
        let p = PathBuf::from(home).join("bin/java");
        if p.is_file() {
            return Some(p);
        }
    }
    process::resolve_command("java", std::path::Path::new("/"), &BTreeMap::new()).ok()
}

#[async_trait::async_trait]
impl Driver for JavaDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn fingerprint(&self) -> Fingerprint {
        let version = match self.version().await {
            Ok(v) => v,
            Err(reason) => return Fingerprint::unhealthy(false, reason),
        };
        let mut attrs = self.exec.isolation_attributes(NAME).await;
        attrs.insert(format!("driver.{NAME}.version"), version.version);
        attrs.insert(format!("driver.{NAME}.runtime"), version.runtime);
        attrs.insert(format!("driver.{NAME}.vm"), version.vm);
        if let Some(reason) = self.exec.capabilities().await.unhealthy_reason() {
            return Fingerprint {
                detected: true,
                healthy: false,
                description: format!("java needs exec's isolation: {reason}"),
                attributes: attrs,
            };
        }
        attrs.insert(format!("driver.{NAME}"), "1".into());
        Fingerprint::healthy(attrs)
    }

    async fn start(&self, task: &TaskConfig) -> Result<TaskHandle, DriverError> {
        let argv = Self::java_args(task)?;
        let java = self
            .java
            .clone()
            .ok_or_else(|| DriverError::NotHealthy("java not found".into()))?;
        self.exec.start_isolated(NAME, task, java, argv).await
    }

    async fn wait(&self, handle: &TaskHandle) -> Result<ExitResult, DriverError> {
        self.exec.wait(handle).await
    }

    async fn stop(
        &self,
        handle: &TaskHandle,
        timeout: Duration,
        signal: &str,
    ) -> Result<(), DriverError> {
        self.exec.stop(handle, timeout, signal).await
    }

    async fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        self.exec.destroy(handle).await
    }

    async fn inspect(&self, handle: &TaskHandle) -> Result<TaskStatus, DriverError> {
        self.exec.inspect(handle).await
    }

    async fn recover(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        self.exec.recover(handle).await
    }

    async fn signal(&self, handle: &TaskHandle, signal: &str) -> Result<(), DriverError> {
        self.exec.signal(handle, signal).await
    }

    async fn stats(&self, handle: &TaskHandle) -> Result<TaskStats, DriverError> {
        self.exec.stats(handle).await
    }

    async fn exec(
        &self,
        handle: &TaskHandle,
        request: &ExecRequest,
    ) -> Result<ExecOutput, DriverError> {
        self.exec.exec(handle, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_version_output_is_parsed() {
        let out = "openjdk version \"17.0.15\" 2025-04-15\n\
                   OpenJDK Runtime Environment (build 17.0.15+6-Debian-1deb12u1)\n\
                   OpenJDK 64-Bit Server VM (build 17.0.15+6-Debian-1deb12u1, mixed mode, sharing)\n";
        let v = parse_java_version(out).unwrap();
        assert_eq!(v.version, "17.0.15");
        assert_eq!(
            v.runtime,
            "OpenJDK Runtime Environment (build 17.0.15+6-Debian-1deb12u1)"
        );
        assert!(v.vm.starts_with("OpenJDK 64-Bit Server VM"));
        let picked = format!("Picked up JAVA_TOOL_OPTIONS: -Xmx1g\n{out}");
        assert_eq!(parse_java_version(&picked).unwrap().version, "17.0.15");
        assert!(parse_java_version("garbage").is_none());
    }

    #[test]
    fn argv_for_jar_and_class_forms() {
        let mut task = TaskConfig::default();
        task.config
            .insert("jar_path".into(), serde_json::json!("local/app.jar"));
        task.config
            .insert("jvm_options".into(), serde_json::json!(["-Xmx64m"]));
        task.config.insert("args".into(), serde_json::json!(["a"]));
        assert_eq!(
            JavaDriver::java_args(&task).unwrap(),
            ["-Xmx64m", "-jar", "local/app.jar", "a"]
        );
        task.config.remove("jar_path");
        task.config
            .insert("class".into(), serde_json::json!("Hello"));
        task.config
            .insert("class_path".into(), serde_json::json!("local"));
        assert_eq!(
            JavaDriver::java_args(&task).unwrap(),
            ["-Xmx64m", "-cp", "local", "Hello", "a"]
        );
        task.config.remove("class");
        assert!(matches!(
            JavaDriver::java_args(&task),
            Err(DriverError::InvalidConfig(_))
        ));
    }
}
