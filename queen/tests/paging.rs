//! ListHives in pages, as a client of a large fleet reads it.

mod common;

use common::*;
use rbee_proto::v1 as pb;

#[tokio::test]
async fn list_hives_pages_walk_every_hive_once_in_order() {
    // Five configured hives that are not running: the queen lists them all the same.
    let addresses: Vec<String> = (1..=5).map(|p| format!("http://127.0.0.1:{p}")).collect();
    let queen = TestQueen::start(addresses.clone()).await;
    let mut client = queen.client().await;
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page =
            client.list_hives(pb::ListHivesRequest { page_size: 2, page_token }).await.unwrap().into_inner();
        pages += 1;
        assert!(page.hives.len() <= 2);
        seen.extend(page.hives.into_iter().map(|h| h.address));
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    let mut expected = addresses;
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);

    let forged = client
        .list_hives(pb::ListHivesRequest { page_size: 0, page_token: "not-a-token".into() })
        .await
        .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::InvalidArgument);
    let too_big = client
        .list_hives(pb::ListHivesRequest { page_size: 100_000, page_token: String::new() })
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), tonic::Code::InvalidArgument);
    // The default page holds a small fleet whole, as `{}` from grpcurl expects.
    let all = client.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner();
    assert_eq!((all.hives.len(), all.next_page_token.as_str()), (5, ""));
}
