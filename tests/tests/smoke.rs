use ganglion_tests::{Enc, TestGateway, meta};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let (mut c, hello) = gw.connect(enc).await;
        assert_eq!(hello["d"]["heartbeat_interval"], 45000);
        c.send(json!({"op":1,"d":{"client_id":"c1","application_id":format!("app-{}", enc.name()),"metadata":{"load":meta("integer", 5)}}})).await;
        let ready = c.recv().await;
        assert_eq!(
            ready,
            json!({"op":2,"d":{"client_id":"c1","restricted":false},"t":null,"ts":ready["ts"]})
        );
        c.dispatch("SEND", json!({"target":{"application":format!("app-{}", enc.name()),"ops":[{"path":"/load","op":"$eq","to":{"value":5}}]},"nonce":"n","payload":{"x":1.5}})).await;
        let got = c.recv().await;
        assert_eq!(
            got["d"],
            json!({"target":null,"nonce":"n","payload":{"x":1.5}})
        );
        let q = gw
            .query(json!({"application": format!("app-{}", enc.name())}))
            .await;
        assert_eq!(q.len(), 1, "{q:?}");
        assert_eq!(q[0]["metadata"]["encoding"], enc.name());
        c.expect_nothing().await;
    }
}
