//! `queen hives`, `hive`, `watch`, `add`, `remove`: the fleet, from a running queen.

use anyhow::Result;
use rbee_proto::v1 as pb;

use super::args::{AddArgs, HiveArgs, ListArgs, QueenUrl, RemoveArgs, WatchArgs};
use super::client::{connect, fleet, on_queens, rpc_error};
use super::render::{render_detail, render_event, render_table};

/// Every hive, walking ListHives' pages.
pub(super) async fn all_hives(queen: &QueenUrl) -> Result<pb::ListHivesResponse> {
    let (mut client, url) = connect(queen).await?;
    let mut all = pb::ListHivesResponse::default();
    loop {
        let page_token = std::mem::take(&mut all.next_page_token);
        let page = client
            .list_hives(pb::ListHivesRequest { page_size: 0, page_token })
            .await
            .map_err(|s| rpc_error(&url, s))?
            .into_inner();
        all.hives.extend(page.hives);
        all.queen_time_unix_ms = page.queen_time_unix_ms;
        all.next_page_token = page.next_page_token;
        if all.next_page_token.is_empty() {
            return Ok(all);
        }
    }
}

/// `queen hives`.
pub async fn hives(args: ListArgs) -> Result<()> {
    let resp = all_hives(&args.queen).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        print!("{}", render_table(&resp.hives));
    }
    Ok(())
}

/// `queen hive ID`.
pub async fn hive(args: HiveArgs) -> Result<()> {
    let request = pb::GetHiveRequest { hive: args.hive.clone() };
    let view = on_queens(&args.queen, fleet, |mut c| {
        let request = request.clone();
        async move { c.get_hive(request).await }
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", render_detail(&view));
    }
    Ok(())
}

/// `queen watch`.
pub async fn watch(args: WatchArgs) -> Result<()> {
    let request = pb::WatchFleetRequest { sample_interval_ms: args.samples.map(|i| i.as_millis_u32()) };
    let (mut client, url) = connect(&args.queen).await?;
    let url = &url;
    let mut stream = client.watch_fleet(request).await.map_err(|s| rpc_error(url, s))?.into_inner();
    loop {
        tokio::select! {
            () = rbee_shared::shutdown::shutdown_signal() => return Ok(()),
            event = stream.message() => match event.map_err(|s| rpc_error(url, s))? {
                Some(e) if args.json => println!("{}", serde_json::to_string(&e)?),
                Some(e) => println!("{}", render_event(&e)),
                None => return Ok(()),
            },
        }
    }
}

/// `queen add ADDR`.
pub async fn add(args: AddArgs) -> Result<()> {
    let request = pb::AddHiveRequest { address: args.address.clone() };
    let resp = on_queens(&args.queen, fleet, |mut c| {
        let request = request.clone();
        async move { c.add_hive(request).await }
    })
    .await?;
    let address = resp.hive.map(|h| h.address).unwrap_or_default();
    println!("{} {address}", if resp.added { "added" } else { "already managed:" });
    Ok(())
}

/// `queen remove ID`.
pub async fn remove(args: RemoveArgs) -> Result<()> {
    let request = pb::RemoveHiveRequest { hive: args.hive.clone() };
    let resp = on_queens(&args.queen, fleet, |mut c| {
        let request = request.clone();
        async move { c.remove_hive(request).await }
    })
    .await?;
    println!("removed {}", resp.address);
    Ok(())
}
