//! A minimal HTTP client for API tests.

use serde_json::Value;

/// One answer: status, `X-Nomad-Index` and body.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub index: Option<i64>,
    pub content_type: String,
    pub body: String,
}

impl Resp {
    /// The body as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} (status {})", self.body, self.status))
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Resp {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.body
        );
        self
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// The server's base URL (`http://ip:port`).
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn new(base: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    pub async fn request(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.expect("send the request");
        let status = resp.status().as_u16();
        let index = resp
            .headers()
            .get("x-nomad-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp.text().await.expect("read the body");
        Resp {
            status,
            index,
            content_type,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.request("POST", path, Some(serde_json::to_vec(body).unwrap()))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.request("PUT", path, Some(serde_json::to_vec(body).unwrap()))
            .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.request("DELETE", path, None).await
    }
}
