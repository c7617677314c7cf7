mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_and_binary_start() {
    let server = TestServer::start(test_config()).await;
    let body = reqwest::get(server.admin_url("/healthz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("ok"));
    server.stop().await;
    let proc = HeraldProcess::spawn("", &[]);
    let body = reqwest::get(proc.admin_url("/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("\"status\":\"ready\""), "{body}");
}
