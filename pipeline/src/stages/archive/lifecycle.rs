//! Retention of the archive as S3 lifecycle rules, and the ages that
//! `blameless archive verify --older-than` takes.

use serde_json::{json, Value};

/// Days each tier keeps its objects.
#[derive(Debug, Clone, Copy)]
pub struct RetentionRules {
    pub hot_days: u32,
    pub cold_days: u32,
}

/// Days after which S3 aborts a multipart upload that never completed,
/// removing its parts. The archive writes each object with one put, so
/// only uploads of other tools are left this way.
const ABORT_MULTIPART_DAYS: u32 = 1;

/// Returns the S3 lifecycle configuration of each bucket of the two tiers,
/// keyed by bucket name, in the JSON that
/// `aws s3api put-bucket-lifecycle-configuration --lifecycle-configuration`
/// takes. A tier whose URL is not `s3://` is keyed by its URL, and its
/// rules only document the retention to apply by other means.
pub fn lifecycle_rules(hot_url: &str, cold_url: &str, retention: RetentionRules) -> Result<Value, String> {
    let (hot_bucket, hot_prefix) = bucket_and_prefix(hot_url);
    let (cold_bucket, cold_prefix) = bucket_and_prefix(cold_url);
    // Expiration applies to every key under a rule's prefix, so a hot rule
    // whose prefix covers the cold tier would delete snapshots at the hot
    // tier's age.
    if hot_bucket == cold_bucket && cold_prefix.starts_with(&hot_prefix) {
        return Err(format!(
            "archive.cold_url {cold_url} lies inside archive.url {hot_url}, so the hot tier's {}-day expiration would also delete the cold tier's snapshots; give each tier its own prefix, such as s3://{hot_bucket}/hot and s3://{cold_bucket}/cold, or its own bucket",
            retention.hot_days
        ));
    }
    let mut buckets = serde_json::Map::new();
    let tiers = [
        ("hot", hot_url, "", retention.hot_days),
        ("cold", cold_url, "incidents/", retention.cold_days),
    ];
    for (tier, url, folder, days) in tiers {
        let (bucket, prefix) = bucket_and_prefix(url);
        let rule = json!({
            "ID": format!("blameless-{tier}-tier-expiration"),
            "Status": "Enabled",
            "Filter": { "Prefix": format!("{prefix}{folder}") },
            "Expiration": { "Days": days },
            "AbortIncompleteMultipartUpload": { "DaysAfterInitiation": ABORT_MULTIPART_DAYS },
        });
        let entry = buckets.entry(bucket).or_insert_with(|| json!({ "Rules": [] }));
        entry["Rules"].as_array_mut().expect("Rules is an array").push(rule);
    }
    Ok(Value::Object(buckets))
}

/// Splits `s3://bucket/some/prefix` into the bucket and `some/prefix/`.
/// Other URLs give the whole URL and an empty prefix.
fn bucket_and_prefix(url: &str) -> (String, String) {
    let Some(rest) = url.strip_prefix("s3://").or_else(|| url.strip_prefix("s3a://")) else {
        return (url.trim_end_matches('/').to_string(), String::new());
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/');
    let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
    (bucket.to_string(), prefix)
}

/// Parses an age such as `90d`, `12h`, `30m` or `45s` into milliseconds.
pub fn parse_age(text: &str) -> Result<i64, String> {
    let invalid = || format!("age {text:?} is invalid; write a whole number and a unit, d, h, m or s, such as 90d or 12h");
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
    let (number, unit) = trimmed.split_at(split);
    if number.is_empty() {
        return Err(invalid());
    }
    let too_large = || format!("age {text:?} is too large; write a smaller number, such as 90d");
    let number: i64 = number.parse().map_err(|_| too_large())?;
    let unit_ms: i64 = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => return Err(invalid()),
    };
    number.checked_mul(unit_ms).ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_in_each_unit() {
        assert_eq!(parse_age("90d"), Ok(90 * 86_400_000));
        assert_eq!(parse_age("12h"), Ok(12 * 3_600_000));
        assert_eq!(parse_age("30m"), Ok(1_800_000));
        assert_eq!(parse_age("45s"), Ok(45_000));
    }

    #[test]
    fn invalid_ages_are_rejected() {
        for text in ["", "90", "d", "90w", "-1d", "1.5d", "99999999999999999999d"] {
            let error = parse_age(text).unwrap_err();
            assert!(error.contains("such as 90d"), "{text}: {error}");
        }
    }

    #[test]
    fn one_bucket_gets_both_rules() {
        let rules = lifecycle_rules(
            "s3://telemetry/hot",
            "s3://telemetry/cold/",
            RetentionRules { hot_days: 90, cold_days: 365 },
        )
        .unwrap();
        let rules = rules["telemetry"]["Rules"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0]["Filter"]["Prefix"], "hot/");
        assert_eq!(rules[0]["Expiration"]["Days"], 90);
        assert_eq!(rules[1]["Filter"]["Prefix"], "cold/incidents/");
        assert_eq!(rules[1]["Expiration"]["Days"], 365);
        assert_eq!(rules[1]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"], 1);
    }

    #[test]
    fn bucket_root_has_empty_prefix() {
        let rules = lifecycle_rules("s3://hot-bucket", "s3://cold-bucket", RetentionRules { hot_days: 120, cold_days: 400 }).unwrap();
        assert_eq!(rules["hot-bucket"]["Rules"][0]["Filter"]["Prefix"], "");
        assert_eq!(rules["hot-bucket"]["Rules"][0]["Expiration"]["Days"], 120);
        assert_eq!(rules["cold-bucket"]["Rules"][0]["Filter"]["Prefix"], "incidents/");
    }

    #[test]
    fn cold_inside_hot_is_rejected() {
        let retention = RetentionRules { hot_days: 90, cold_days: 365 };
        for (hot, cold) in [("s3://bkt", "s3://bkt/cold"), ("s3://bkt/data", "s3://bkt/data/cold")] {
            let error = lifecycle_rules(hot, cold, retention).unwrap_err();
            assert!(error.contains("90-day expiration would also delete"), "{hot} {cold}: {error}");
        }
        assert!(lifecycle_rules("s3://bkt/hot", "s3://bkt/cold", retention).is_ok());
    }

    #[test]
    fn huge_age_is_too_large() {
        for text in ["9999999999999999d", "99999999999999999999s"] {
            let error = parse_age(text).unwrap_err();
            assert!(error.contains("is too large"), "{text}: {error}");
        }
    }
}
