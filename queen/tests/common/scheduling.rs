//! What the scheduler tests share: a fleet of two-GPU hives, a queen with given
//! scheduler settings, and the Place and ListReservations calls a client makes.

use rbee_proto::v1 as pb;
use rbee_proto::v1::scheduler_client::SchedulerClient;
use rbee_queen::QueenConfig;
use rbee_queen::scheduler::SchedulerSettings;
use tonic::transport::Channel;

use super::{TestQueen, fast_config, online, wait_for};

/// One GiB.
pub const GIB: u64 = 1 << 30;

/// Two GPUs of 24 GiB with 4 GiB in use: 20 GiB free on each. Usage never grows, so
/// nothing settles: every reservation keeps counting.
pub const TWO_GPUS: &str = r#"
[[gpu]]
id = "GPU-0"
vram_total = "24GiB"
vram_used = ["4GiB"]
util_percent = [10]
temperature_c = [40]
[[gpu]]
id = "GPU-1"
vram_total = "24GiB"
vram_used = ["4GiB"]
util_percent = [20]
temperature_c = [40]
"#;

/// A queen over `hives` with `scheduler`, once every hive is online with a sample.
pub async fn queen_with(
    hives: Vec<String>,
    scheduler: SchedulerSettings,
) -> (TestQueen, SchedulerClient<Channel>) {
    let config = QueenConfig { scheduler, ..fast_config(hives) };
    let queen = TestQueen::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "hives online with samples", |hs| {
        hs.iter().all(|h| online(h) && h.latest_sample.is_some())
    })
    .await;
    let client = SchedulerClient::connect(queen.url()).await.unwrap();
    (queen, client)
}

/// A request for `vram` bytes on one GPU.
pub fn gpu_request(vram: u64) -> pb::PlaceRequest {
    pb::PlaceRequest {
        model: "m".into(),
        vram_bytes: vram,
        device_kind: pb::DeviceKind::Cuda as i32,
        ..Default::default()
    }
}

/// The placement, or a panic naming the rejection.
pub fn placement(r: pb::PlaceResponse) -> pb::Placement {
    match r.result.unwrap() {
        pb::place_response::Result::Placement(p) => p,
        pb::place_response::Result::Rejection(r) => panic!("rejected: {r:?}"),
    }
}

/// Every reservation, walking pages of `page_size` (0: the queen's default).
pub async fn all_reservations(client: &mut SchedulerClient<Channel>, page_size: u32) -> Vec<pb::Reservation> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_reservations(pb::ListReservationsRequest { page_size, page_token })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.reservations);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}
