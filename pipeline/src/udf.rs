//! emrflow's scalar functions, and the session option that carries the pseudonymization key.
//! Functions travel by name in plans, so every engine that runs a pipeline plan (the embedded
//! context, a Ballista scheduler and its executors) registers them through
//! [`register_functions`]; the key travels in the session configuration, never inside a plan
//! literal, so it does not appear in plan text or logs of the plan.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Date32Array, Int32Array, Int64Array, StringBuilder};
use arrow::datatypes::DataType;
use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::common::{config_err, exec_err};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    AggregateUDF, ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use sha2::Sha256;

/// Session options of emrflow's functions (`SET emrflow.pseudonym_key = ...`).
///
/// Written by hand rather than with DataFusion's `extensions_options!`, whose entries are listed
/// without the `emrflow.` prefix: a Ballista client sends a session's options as those
/// key/value entries and the scheduler and executors apply them with `set`, which needs the
/// prefix, so the key would silently not arrive. `Debug` does not print the key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EmrflowOptions {
    /// The pseudonymization key, hex-encoded. Empty means no key was configured.
    pub pseudonym_key: String,
}

const PSEUDONYM_KEY_OPTION: &str = "pseudonym_key";

impl std::fmt::Debug for EmrflowOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmrflowOptions")
            .field(
                PSEUDONYM_KEY_OPTION,
                &if self.pseudonym_key.is_empty() {
                    ""
                } else {
                    "<set>"
                },
            )
            .finish()
    }
}

impl ExtensionOptions for EmrflowOptions {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }
    fn set(&mut self, key: &str, value: &str) -> DfResult<()> {
        // `ConfigOptions::set` strips the prefix; a bare key arrives when set directly.
        let key = key
            .strip_prefix(Self::PREFIX)
            .and_then(|k| k.strip_prefix('.'))
            .unwrap_or(key);
        match key {
            PSEUDONYM_KEY_OPTION => {
                self.pseudonym_key = value.to_string();
                Ok(())
            }
            other => {
                config_err!("unknown emrflow option {other:?} (known: {PSEUDONYM_KEY_OPTION})")
            }
        }
    }
    fn entries(&self) -> Vec<ConfigEntry> {
        vec![ConfigEntry {
            key: format!("{}.{PSEUDONYM_KEY_OPTION}", Self::PREFIX),
            value: (!self.pseudonym_key.is_empty()).then(|| self.pseudonym_key.clone()),
            description: "The pseudonymization key, hex-encoded; empty when none is configured.",
        }]
    }
}

impl ConfigExtension for EmrflowOptions {
    const PREFIX: &'static str = "emrflow";
}

/// Name of the pseudonymization function: `emr_pseudonym(utf8) -> utf8`.
pub const PSEUDONYM_FN: &str = "emr_pseudonym";
/// Name of the age function: `emr_age_years(date32 dob, date32 at) -> int64`.
pub const AGE_FN: &str = "emr_age_years";

/// Name of the first-true function: `emr_first_true(bool, bool, …) -> int32`, the position
/// of the first argument that is true (NULL and false do not count), or NULL when none is.
pub const FIRST_TRUE_FN: &str = "emr_first_true";

/// Name of the category function: `emr_category_index(value, 'c0', 'c1', …) -> int32`, the
/// position of the value's text among the categories, or NULL when it is null or not one of them.
pub const CATEGORY_INDEX_FN: &str = "emr_category_index";

/// Ages above this are reported as this value (HIPAA Safe Harbor's "90 or older").
pub const AGE_CAP: i64 = 90;

/// All of the pipeline's scalar functions.
pub fn functions() -> Vec<Arc<ScalarUDF>> {
    vec![
        Arc::new(ScalarUDF::new_from_impl(Pseudonym::new())),
        Arc::new(ScalarUDF::new_from_impl(AgeYears::new())),
        Arc::new(ScalarUDF::new_from_impl(FirstTrue::new())),
        Arc::new(ScalarUDF::new_from_impl(CategoryIndex::new())),
        crate::fingerprint::row_leaf_udf(),
    ]
}

/// All of the pipeline's aggregate functions.
pub fn aggregate_functions() -> Vec<Arc<AggregateUDF>> {
    vec![
        crate::fingerprint::fingerprint_udaf(),
        crate::moments::moments_udaf(),
    ]
}

/// Every scalar function an emrflow plan may name: the pipeline's and the `ml` crate's.
pub fn engine_functions() -> Vec<Arc<ScalarUDF>> {
    let mut all = functions();
    all.extend(ml::scalar_functions());
    all
}

/// Every aggregate function an emrflow plan may name: the fingerprint and the training
/// histogram.
pub fn engine_aggregate_functions() -> Vec<Arc<AggregateUDF>> {
    let mut all = aggregate_functions();
    all.extend(ml::aggregate_functions());
    all
}

/// Registers every function an emrflow plan may name ([`engine_functions`] and
/// [`engine_aggregate_functions`]) with a context, a session state or an executor registry. The
/// embedded context, a Ballista scheduler's sessions and its executors all call this, so a plan
/// built on one decodes and runs on the others.
pub fn register_functions(registry: &mut dyn FunctionRegistry) -> DfResult<()> {
    for f in functions() {
        registry.register_udf(f)?;
    }
    for f in aggregate_functions() {
        registry.register_udaf(f)?;
    }
    ml::register_functions(registry).map_err(|e| DataFusionError::External(Box::new(e)))
}

/// `hex(HMAC-SHA256(key, value))`; null stays null.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Pseudonym {
    signature: Signature,
}

impl Pseudonym {
    fn new() -> Self {
        Self {
            signature: Signature::string(1, Volatility::Immutable),
        }
    }
}

/// The keyed pseudonym of one value, as lowercase hex.
pub fn pseudonym(key: &[u8], value: &[u8]) -> String {
    let mut mac = [[0u8; 32]];
    HmacKey::new(key).macs(&[value], &mut mac);
    hex::encode(mac[0])
}

/// HMAC-SHA256 (RFC 2104) under one key, for many messages at once. The two hashes of each
/// MAC, `H(K ^ ipad ‖ m)` and `H(K ^ opad ‖ inner)`, are independent across messages, so
/// they run many at a time in SIMD or SHA-NI lanes with the pad block as the shared prefix:
/// about one and a half times the `hmac` crate's speed, one message after another.
struct HmacKey {
    ipad: [u8; 64],
    opad: [u8; 64],
}

impl HmacKey {
    fn new(key: &[u8]) -> Self {
        use sha2::Digest as _;
        let mut block = [0u8; 64];
        if key.len() > block.len() {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        Self {
            ipad: block.map(|b| b ^ 0x36),
            opad: block.map(|b| b ^ 0x5c),
        }
    }

    /// The MAC of each of `values` into `out` (the same length).
    fn macs(&self, values: &[&[u8]], out: &mut [[u8; 32]]) {
        const CHUNK: usize = 1024;
        let mut inner = vec![[0u8; 32]; CHUNK.min(values.len())];
        for (values, out) in values.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
            let inner = &mut inner[..values.len()];
            tape_sha256::hash_many_prefixed(&self.ipad, values, inner);
            let inner: Vec<&[u8]> = inner.iter().map(|h| h.as_slice()).collect();
            tape_sha256::hash_many_prefixed(&self.opad, &inner, out);
        }
    }
}

impl ScalarUDFImpl for Pseudonym {
    fn name(&self) -> &str {
        PSEUDONYM_FN
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let key_hex = args
            .config_options
            .extensions
            .get::<EmrflowOptions>()
            .map(|o| o.pseudonym_key.clone())
            .unwrap_or_default();
        if key_hex.is_empty() {
            return exec_err!("{PSEUDONYM_FN}: no pseudonymization key is configured");
        }
        let Ok(key) = hex::decode(&key_hex) else {
            return exec_err!("{PSEUDONYM_FN}: the configured key is not hex");
        };
        let [arg] = args.args.as_slice() else {
            return exec_err!("{PSEUDONYM_FN} takes one argument");
        };
        let array = arg.to_array(args.number_rows)?;
        // Read in place whatever string layout arrives (the planner's VARCHAR is a view): a cast
        // to one layout would copy every value first.
        let array = match array.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => array,
            _ => arrow::compute::cast(&array, &DataType::Utf8)?,
        };
        let strings: Vec<Option<&str>> = match array.data_type() {
            DataType::Utf8 => array.as_string::<i32>().iter().collect(),
            DataType::LargeUtf8 => array.as_string::<i64>().iter().collect(),
            DataType::Utf8View => array.as_string_view().iter().collect(),
            other => return exec_err!("{PSEUDONYM_FN} expects a string argument, got {other}"),
        };
        let keyed = HmacKey::new(&key);
        let present: Vec<&[u8]> = strings.iter().flatten().map(|v| v.as_bytes()).collect();
        let mut macs = vec![[0u8; 32]; present.len()];
        keyed.macs(&present, &mut macs);
        let mut out = StringBuilder::with_capacity(strings.len(), present.len() * 64);
        let mut macs = macs.iter();
        let mut buf = [0u8; 64];
        for v in &strings {
            if v.is_none() {
                out.append_null();
                continue;
            }
            let hex = macs
                .next()
                .and_then(|mac| hex::encode_to_slice(mac, &mut buf).ok())
                .and_then(|()| std::str::from_utf8(&buf).ok());
            match hex {
                Some(h) => out.append_value(h),
                None => return exec_err!("{PSEUDONYM_FN}: hex encoding failed"),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

/// Which drop reason a row meets first. A `CASE WHEN c0 THEN 0 WHEN c1 THEN 1 …` says the
/// same, but the engine evaluates each branch on the rows no earlier branch matched, copying
/// every column of those rows per branch; this evaluates each condition once over the whole
/// batch and never copies a row.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FirstTrue {
    signature: Signature,
}

impl FirstTrue {
    fn new() -> Self {
        Self {
            signature: Signature::variadic(vec![DataType::Boolean], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for FirstTrue {
    fn name(&self) -> &str {
        FIRST_TRUE_FN
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Int32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let mut first = vec![i32::MAX; rows];
        // Last to first, so the earliest true argument writes last.
        for (i, arg) in args.args.iter().enumerate().rev() {
            let array = arg.to_array(rows)?;
            let Some(conditions) = array.as_boolean_opt() else {
                return exec_err!("{FIRST_TRUE_FN} takes booleans, got {}", array.data_type());
            };
            let Ok(position) = i32::try_from(i) else {
                return exec_err!("{FIRST_TRUE_FN} takes at most {} arguments", i32::MAX);
            };
            let met = match conditions.nulls() {
                Some(valid) => conditions.values() & valid.inner(),
                None => conditions.values().clone(),
            };
            for row in met.set_indices() {
                first[row] = position;
            }
        }
        let out: Int32Array = first
            .into_iter()
            .map(|p| (p != i32::MAX).then_some(p))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// Categorical encoding by lookup. `CASE CAST(x AS VARCHAR) WHEN 'c0' THEN 0 …` says the same,
/// but copies every value into a new string column and then compares it with each category in
/// turn; this reads the values in place and looks each up once.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CategoryIndex {
    signature: Signature,
}

impl CategoryIndex {
    fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for CategoryIndex {
    fn name(&self) -> &str {
        CATEGORY_INDEX_FN
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Int32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let Some((value, categories)) = args.args.split_first() else {
            return exec_err!("{CATEGORY_INDEX_FN} needs a value");
        };
        let mut index = std::collections::HashMap::with_capacity(categories.len());
        for (i, category) in categories.iter().enumerate() {
            let text = match category {
                ColumnarValue::Scalar(s) => s.try_as_str().flatten(),
                ColumnarValue::Array(_) => None,
            };
            let (Some(text), Ok(i)) = (text, i32::try_from(i)) else {
                return exec_err!("{CATEGORY_INDEX_FN}: categories must be string literals");
            };
            index.entry(text).or_insert(i);
        }
        let array = value.to_array(args.number_rows)?;
        let array = match array.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => array,
            _ => arrow::compute::cast(&array, &DataType::Utf8)?,
        };
        let look = |v: Option<&str>| v.and_then(|v| index.get(v).copied());
        let out: Int32Array = match array.data_type() {
            DataType::Utf8 => array.as_string::<i32>().iter().map(look).collect(),
            DataType::LargeUtf8 => array.as_string::<i64>().iter().map(look).collect(),
            DataType::Utf8View => array.as_string_view().iter().map(look).collect(),
            other => return exec_err!("{CATEGORY_INDEX_FN} cannot read {other} as text"),
        };
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// Whole years between two dates, capped at [`AGE_CAP`]; null if either is null.
#[derive(Debug, PartialEq, Eq, Hash)]
struct AgeYears {
    signature: Signature,
}

impl AgeYears {
    fn new() -> Self {
        Self {
            signature: Signature::exact(
                vec![DataType::Date32, DataType::Date32],
                Volatility::Immutable,
            ),
        }
    }
}

/// Whole years from `dob` to `at` (days since the epoch), the way a birthday counts them.
pub fn age_years(dob: i32, at: i32) -> Option<i64> {
    let dob = chrono::NaiveDate::from_num_days_from_ce_opt(dob + EPOCH_CE_DAYS)?;
    let at = chrono::NaiveDate::from_num_days_from_ce_opt(at + EPOCH_CE_DAYS)?;
    let years = at.years_since(dob).map(i64::from).unwrap_or(0);
    Some(years.min(AGE_CAP))
}

/// Days from 0001-01-01 (day 1 of the common era) to 1970-01-01.
const EPOCH_CE_DAYS: i32 = 719_163;

impl ScalarUDFImpl for AgeYears {
    fn name(&self) -> &str {
        AGE_FN
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [dob, at] = args.args.as_slice() else {
            return exec_err!("{AGE_FN} takes two arguments");
        };
        let dob = dob.to_array(args.number_rows)?;
        let at = at.to_array(args.number_rows)?;
        let (Some(dob), Some(at)) = (
            dob.as_any().downcast_ref::<Date32Array>(),
            at.as_any().downcast_ref::<Date32Array>(),
        ) else {
            return exec_err!("{AGE_FN} expects two Date32 arguments");
        };
        let out: Int64Array = dob
            .iter()
            .zip(at.iter())
            .map(|(d, a)| match (d, a) {
                (Some(d), Some(a)) => age_years(d, a),
                _ => None,
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionConfig;

    #[test]
    fn options_round_trip_through_their_listed_entries() {
        // What a cluster client sends is `entries()`; what the far side does is `set(key, value)`.
        let mut sent = SessionConfig::new().with_option_extension(EmrflowOptions::default());
        sent.options_mut()
            .set("emrflow.pseudonym_key", "00ff")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut received = SessionConfig::new().with_option_extension(EmrflowOptions::default());
        for entry in sent.options().entries() {
            if let Some(value) = entry.value {
                received
                    .options_mut()
                    .set(&entry.key, &value)
                    .unwrap_or_else(|e| panic!("{}: {e}", entry.key));
            }
        }
        let key = received
            .options()
            .extensions
            .get::<EmrflowOptions>()
            .map(|o| o.pseudonym_key.clone());
        assert_eq!(key.as_deref(), Some("00ff"));
        assert!(
            !format!("{:?}", sent.options()).contains("00ff"),
            "Debug shows the key"
        );
        let unknown = received.options_mut().set("emrflow.nope", "1");
        assert!(unknown.is_err());
    }

    #[test]
    fn pseudonym_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            pseudonym(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn lane_hashed_macs_equal_the_hmac_crate_for_any_key_and_length() {
        use hmac::{Hmac, Mac};
        let reference = |key: &[u8], value: &[u8]| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
            mac.update(value);
            hex::encode(mac.finalize().into_bytes())
        };
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 37 % 251) as u8).collect();
        for key_len in [0, 1, 4, 32, 63, 64, 65, 131] {
            let key = &bytes[..key_len];
            // Message lengths around the one-block (55) and two-block boundaries.
            let values: Vec<&[u8]> = (0..=200).map(|n| &bytes[50..50 + n]).collect();
            let mut macs = vec![[0u8; 32]; values.len()];
            HmacKey::new(key).macs(&values, &mut macs);
            for (value, mac) in values.iter().zip(&macs) {
                assert_eq!(hex::encode(mac), reference(key, value), "key {key_len}");
            }
        }
        // More messages than one lane batch.
        let many: Vec<Vec<u8>> = (0..2500u32)
            .map(|i| format!("V{i:08}").into_bytes())
            .collect();
        let values: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
        let mut macs = vec![[0u8; 32]; values.len()];
        HmacKey::new(b"k").macs(&values, &mut macs);
        for (value, mac) in values.iter().zip(&macs) {
            assert_eq!(hex::encode(mac), reference(b"k", value));
        }
    }

    #[test]
    fn age_counts_birthdays_and_caps_at_90() {
        let day = |y, m, d| {
            chrono::NaiveDate::from_ymd_opt(y, m, d)
                .map(|x| x.num_days_from_ce() - EPOCH_CE_DAYS)
                .unwrap_or_default()
        };
        use chrono::Datelike;
        assert_eq!(age_years(day(1960, 6, 15), day(2020, 6, 14)), Some(59));
        assert_eq!(age_years(day(1960, 6, 15), day(2020, 6, 15)), Some(60));
        assert_eq!(age_years(day(1920, 1, 1), day(2020, 6, 15)), Some(AGE_CAP));
    }
}
