//! The CLI's `--json`: the proto3 JSON mapping (camelCase, as grpcurl prints), with every
//! field that has no presence printed even at its default, so that `"index": 0` and
//! `"reservations": []` are there for `jq`; an optional or message field that is unset
//! is left out, as in the canonical mapping (the generated serializers emit it as null).

use serde::Serialize;
use serde_json::Value;

/// Leaves out the nulls of unset optional and message fields, at any depth.
fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// `v` as pretty-printed JSON.
pub fn json<T: Serialize + ?Sized>(v: &T) -> Result<String, serde_json::Error> {
    let mut value = serde_json::to_value(v)?;
    drop_nulls(&mut value);
    serde_json::to_string_pretty(&value)
}

/// `v` as JSON on one line (a stream of events, one per line).
pub fn json_line<T: Serialize + ?Sized>(v: &T) -> Result<String, serde_json::Error> {
    let mut value = serde_json::to_value(v)?;
    drop_nulls(&mut value);
    serde_json::to_string(&value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_proto::v1 as pb;

    #[test]
    fn zeros_and_empty_lists_are_printed() {
        let empty: Value =
            serde_json::from_str(&json(&pb::ListReservationsResponse::default()).unwrap()).unwrap();
        assert_eq!(empty["reservations"], serde_json::json!([]), "{empty}");
        let gpu = pb::GpuDevice { id: "GPU-0".into(), index: 0, ..Default::default() };
        let v: Value = serde_json::from_str(&json(&gpu).unwrap()).unwrap();
        assert_eq!(v["index"], 0, "{v}");
        assert_eq!(v["vramTotalBytes"], "0", "{v}");
    }

    #[test]
    fn unset_optional_and_message_fields_are_left_out() {
        let view = pb::HiveView { hive_id: "h".into(), ..Default::default() };
        let v: Value = serde_json::from_str(&json_line(&view).unwrap()).unwrap();
        assert!(v.get("latestSample").is_none() && v.get("lastError").is_none(), "{v}");
        assert_eq!(v["hiveId"], "h");
        assert_eq!(v["healthReasons"], serde_json::json!([]), "{v}");
    }

    #[test]
    fn what_is_printed_reads_back() {
        let list = pb::ListHivesResponse { hives: vec![pb::HiveView::default()], ..Default::default() };
        let back: pb::ListHivesResponse = serde_json::from_str(&json(&list).unwrap()).unwrap();
        assert_eq!(back, list);
    }
}
