//! emrflow's scalar functions, and the session option that carries the pseudonymization key.
//! Functions travel by name in plans, so every engine that runs a pipeline plan (the embedded
//! context, a Ballista scheduler and its executors) registers them through
//! [`register_functions`]; the key travels in the session configuration, never inside a plan
//! literal, so it does not appear in plan text or logs of the plan.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Date32Array, Int32Array, Int64Array, StringArray};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::DataType;
use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::common::format::DEFAULT_CAST_OPTIONS;
use datafusion::common::{config_err, exec_err};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    AggregateUDF, ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TypeSignature, Volatility,
};
use sha2::Sha256;

/// Session options of emrflow's functions (`SET emrflow.pseudonym_key_id = ...`).
///
/// Written by hand rather than with DataFusion's `extensions_options!`, whose entries are listed
/// without the `emrflow.` prefix: a Ballista client sends a session's options as those
/// key/value entries and the scheduler and executors apply them with `set`, which needs the
/// prefix, so the setting would silently not arrive.
///
/// The session names the pseudonymization key only by its id ([`key_id`]); the key itself never
/// travels with a session or a plan. Each process that computes pseudonyms holds it
/// ([`hold_key`]): the client from the job's key source, an executor from its own key file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmrflowOptions {
    /// The id of the pseudonymization key the session's plans use. Empty means none.
    pub pseudonym_key_id: String,
}

const PSEUDONYM_KEY_ID_OPTION: &str = "pseudonym_key_id";

/// Fewest bytes a pseudonymization key may have (a hex key needs twice as many characters).
pub const MIN_KEY_BYTES: usize = 32;

/// Checks that `key` can be a pseudonymization key: at least [`MIN_KEY_BYTES`] bytes of
/// randomness, counted as hex digits at half a byte each when the key is hex text (as
/// `openssl rand -hex 32` writes it), and not an obvious pattern. Anyone who can guess the key
/// re-links every pseudonym to its identifier, so a short or patterned key is refused rather
/// than warned about. The message says why, never what the key is.
pub fn check_key(key: &[u8]) -> Result<(), String> {
    let hex = !key.is_empty() && key.iter().all(u8::is_ascii_hexdigit);
    let bytes = if hex { key.len() / 2 } else { key.len() };
    if bytes < MIN_KEY_BYTES {
        return Err(format!(
            "the key holds {bytes} bytes{}; at least {MIN_KEY_BYTES} random bytes are required \
             (for example `openssl rand -hex 32`)",
            if hex { " as hex" } else { "" }
        ));
    }
    let mut seen = [false; 256];
    for b in key {
        seen[usize::from(*b)] = true;
    }
    let distinct = seen.iter().filter(|s| **s).count();
    if distinct < 8 {
        return Err(format!(
            "the key uses only {distinct} distinct byte values: it is not random (for example \
             `openssl rand -hex 32`)"
        ));
    }
    Ok(())
}

/// A key's id: `HMAC-SHA256(key, "emrflow-pseudonym-key-id/v1")` in hex. It names the key in
/// manifests, sessions and errors; unlike a plain hash of the key, it gives nothing to test
/// guesses of the key against without the key itself.
pub fn key_id(key: &[u8]) -> String {
    pseudonym(key, b"emrflow-pseudonym-key-id/v1")
}

/// The pseudonymization keys this process holds, by id.
static KEYS: std::sync::LazyLock<std::sync::RwLock<HashMap<String, Arc<HmacKey>>>> =
    std::sync::LazyLock::new(Default::default);

/// Makes `key` available to `emr_pseudonym` in this process, for sessions that name its id;
/// returns the id. Call [`check_key`] first.
pub fn hold_key(key: &[u8]) -> String {
    let id = key_id(key);
    let mut keys = KEYS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    keys.entry(id.clone())
        .or_insert_with(|| Arc::new(HmacKey::new(key)));
    id
}

fn held_key(id: &str) -> Option<Arc<HmacKey>> {
    KEYS.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(id)
        .cloned()
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
            PSEUDONYM_KEY_ID_OPTION => {
                self.pseudonym_key_id = value.to_string();
                Ok(())
            }
            other => {
                config_err!("unknown emrflow option {other:?} (known: {PSEUDONYM_KEY_ID_OPTION})")
            }
        }
    }
    fn entries(&self) -> Vec<ConfigEntry> {
        vec![ConfigEntry {
            key: format!("{}.{PSEUDONYM_KEY_ID_OPTION}", Self::PREFIX),
            value: (!self.pseudonym_key_id.is_empty()).then(|| self.pseudonym_key_id.clone()),
            description: "The id of the pseudonymization key; empty when none is configured.",
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

/// Name of the coding function: `emr_fhir_code(list, 'system'[, 'field']) -> utf8`, the `code`
/// (or `field`) of the first item of a FHIR list of `{system, code}` (a `coding` list; also
/// `identifier` and `telecom`, whose `value` is the field) in that system, or NULL.
pub const FHIR_CODE_FN: &str = "emr_fhir_code";

/// Name of the export check: `emr_fhir_check(ok, 'Type') -> bool`, true where `ok` is, and an
/// error naming the resource type when any row's `ok` is false or NULL. It stands in a filter,
/// which no optimization removes, so the check runs wherever the plan does.
pub const FHIR_CHECK_FN: &str = "emr_fhir_check";

/// Ages above this are reported as this value (HIPAA Safe Harbor's "90 or older").
pub const AGE_CAP: i64 = 90;

/// All of the pipeline's scalar functions.
pub fn functions() -> Vec<Arc<ScalarUDF>> {
    vec![
        Arc::new(ScalarUDF::new_from_impl(Pseudonym::new())),
        Arc::new(ScalarUDF::new_from_impl(AgeYears::new())),
        Arc::new(ScalarUDF::new_from_impl(FirstTrue::new())),
        Arc::new(ScalarUDF::new_from_impl(CategoryIndex::new())),
        Arc::new(ScalarUDF::new_from_impl(FhirCode::new())),
        Arc::new(ScalarUDF::new_from_impl(FhirCheck::new())),
        crate::fingerprint::row_leaf_udf(),
    ]
}

/// All of the pipeline's aggregate functions.
pub fn aggregate_functions() -> Vec<Arc<AggregateUDF>> {
    vec![
        crate::fingerprint::fingerprint_udaf(),
        crate::moments::moments_udaf(),
        crate::categories::categories_udaf(),
    ]
}

/// Registers the pipeline's functions ([`functions`] and [`aggregate_functions`]) with a
/// context, a session state or a registry. Every engine that runs emrflow plans registers these
/// and `ml`'s together (the `engine` crate).
pub fn register_functions(registry: &mut dyn FunctionRegistry) -> DfResult<()> {
    for f in functions() {
        registry.register_udf(f)?;
    }
    for f in aggregate_functions() {
        registry.register_udaf(f)?;
    }
    Ok(())
}

/// Calls of the pipeline's scalar functions as expressions, for the plan pieces built with the
/// DataFrame API, as `datafusion::functions::expr_fn` offers DataFusion's own. A call carries
/// the function by name, so it runs wherever [`register_functions`] registered it.
pub(crate) mod expr_fn {
    use datafusion::logical_expr::{Expr, ScalarUDF, lit};

    use super::{AgeYears, CategoryIndex, FirstTrue, Pseudonym};

    /// `emr_pseudonym(value)`.
    pub(crate) fn pseudonym(value: Expr) -> Expr {
        ScalarUDF::new_from_impl(Pseudonym::new()).call(vec![value])
    }

    /// `emr_age_years(dob, at)`.
    pub(crate) fn age_years(dob: Expr, at: Expr) -> Expr {
        ScalarUDF::new_from_impl(AgeYears::new()).call(vec![dob, at])
    }

    /// `emr_first_true(c0, c1, ...)`.
    pub(crate) fn first_true(conditions: Vec<Expr>) -> Expr {
        ScalarUDF::new_from_impl(FirstTrue::new()).call(conditions)
    }

    /// `emr_category_index(value, 'c0', 'c1', ...)`.
    pub(crate) fn category_index(value: Expr, categories: &[String]) -> Expr {
        let mut args = vec![value];
        args.extend(categories.iter().map(|c| lit(c.as_str())));
        ScalarUDF::new_from_impl(CategoryIndex::new()).call(args)
    }
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
        let id = args
            .config_options
            .extensions
            .get::<EmrflowOptions>()
            .map(|o| o.pseudonym_key_id.clone())
            .unwrap_or_default();
        if id.is_empty() {
            return exec_err!("{PSEUDONYM_FN}: the session names no pseudonymization key");
        }
        let Some(keyed) = held_key(&id) else {
            return exec_err!(
                "{PSEUDONYM_FN}: this process holds no pseudonymization key with id {id} \
                 (an executor is given the job's key with --pseudonym-key-file)"
            );
        };
        let [arg] = args.args.as_slice() else {
            return exec_err!("{PSEUDONYM_FN} takes one argument");
        };
        let array = as_text(arg.to_array(args.number_rows)?)?;
        let strings = texts(&array)?;
        let present: Vec<&[u8]> = strings.iter().flatten().map(|v| v.as_bytes()).collect();
        let mut macs = vec![[0u8; 32]; present.len()];
        keyed.macs(&present, &mut macs);
        Ok(ColumnarValue::Array(
            Arc::new(hex_strings(&strings, &macs)?) as ArrayRef,
        ))
    }
}

/// Lowercase hex of 4 bytes, 8 digits, computed in one 64-bit word: each byte's two nibbles
/// spread into bytes of their own, then each nibble raised to `'0'..'9'` or `'a'..'f'`.
fn hex4(bytes: [u8; 4]) -> [u8; 8] {
    let mut x = u64::from(u32::from_le_bytes(bytes));
    x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    // Byte 2i holds input byte i; its high nibble goes first in the text.
    let nibbles = ((x >> 4) & 0x000f_000f_000f_000f) | ((x & 0x000f_000f_000f_000f) << 8);
    let letters = ((nibbles + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (nibbles + 0x3030_3030_3030_3030 + letters * (b'a' - b'0' - 10) as u64).to_le_bytes()
}

/// The hex of `macs` as a string column, one MAC for each present value of `strings` (nulls
/// stay null). The digits go straight into the column's one value buffer rather than value by
/// value through a scratch buffer, a UTF-8 check and a builder.
fn hex_strings(strings: &[Option<&str>], macs: &[[u8; 32]]) -> DfResult<StringArray> {
    let mut values = vec![0u8; macs.len() * 64];
    for (mac, out) in macs.iter().zip(values.chunks_exact_mut(64)) {
        for (word, digits) in mac
            .as_chunks::<4>()
            .0
            .iter()
            .zip(out.as_chunks_mut::<8>().0)
        {
            *digits = hex4(*word);
        }
    }
    let mut offsets = Vec::with_capacity(strings.len() + 1);
    let mut end = 0i32;
    offsets.push(end);
    for v in strings {
        if v.is_some() {
            end = end.checked_add(64).ok_or_else(|| {
                DataFusionError::Execution(format!("{PSEUDONYM_FN}: batch too large"))
            })?;
        }
        offsets.push(end);
    }
    let nulls = NullBuffer::from_iter(strings.iter().map(Option::is_some));
    Ok(StringArray::try_new(
        OffsetBuffer::new(offsets.into()),
        values.into(),
        Some(nulls).filter(|n| n.null_count() > 0),
    )?)
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

/// The code of a coding list in one code system. `coding[1]['code']` reads only the first
/// coding, while an export may code one concept in several systems (LOINC and a local code) in
/// any order.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FhirCode {
    signature: Signature,
}

impl FhirCode {
    fn new() -> Self {
        Self {
            signature: Signature::one_of(
                vec![TypeSignature::Any(2), TypeSignature::Any(3)],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for FhirCode {
    fn name(&self) -> &str {
        FHIR_CODE_FN
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let literal = |v: &ColumnarValue| match v {
            ColumnarValue::Scalar(s) => s.try_as_str().flatten().map(str::to_string),
            ColumnarValue::Array(_) => None,
        };
        let (codings, system, field) = match args.args.as_slice() {
            [codings, system] => (codings, literal(system), Some("code".to_string())),
            [codings, system, field] => (codings, literal(system), literal(field)),
            _ => return exec_err!("{FHIR_CODE_FN} takes a list, a system and a field"),
        };
        let (Some(system), Some(field)) = (system, field) else {
            return exec_err!("{FHIR_CODE_FN}: the system and the field are text literals");
        };
        let codings = codings.to_array(rows)?;
        if codings.data_type() == &DataType::Null {
            return Ok(ColumnarValue::Array(arrow::array::new_null_array(
                &DataType::Utf8,
                rows,
            )));
        }
        let Some(list) = codings.as_list_opt::<i32>() else {
            return exec_err!("{FHIR_CODE_FN} takes a list, got {}", codings.data_type());
        };
        let Some(items) = list.values().as_struct_opt() else {
            return exec_err!("{FHIR_CODE_FN} takes a list of codings");
        };
        let text = |name: &str| -> DfResult<StringArray> {
            let Some(column) = items.column_by_name(name) else {
                return exec_err!("{FHIR_CODE_FN}: a coding has no {name}");
            };
            let column = arrow::compute::cast(column, &DataType::Utf8)?;
            Ok(column.as_string::<i32>().clone())
        };
        let (systems, codes) = (text("system")?, text(&field)?);
        let mut out = arrow::array::StringBuilder::with_capacity(rows, rows * 8);
        for row in 0..rows {
            let found = if list.is_null(row) {
                None
            } else {
                let offsets = list.value_offsets();
                let (from, to) = (offsets[row] as usize, offsets[row + 1] as usize);
                (from..to).find(|&i| {
                    items.is_valid(i)
                        && systems.is_valid(i)
                        && systems.value(i) == system.as_str()
                        && codes.is_valid(i)
                })
            };
            match found {
                Some(i) => out.append_value(codes.value(i)),
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// The export's checks, stated in the plan as filters. The error names only the resource type:
/// the run then reads the export again to name the file and line (`run::fhir::check_export`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct FhirCheck {
    signature: Signature,
}

impl FhirCheck {
    fn new() -> Self {
        Self {
            signature: Signature::exact(
                vec![DataType::Boolean, DataType::Utf8],
                Volatility::Volatile,
            ),
        }
    }
}

impl ScalarUDFImpl for FhirCheck {
    fn name(&self) -> &str {
        FHIR_CHECK_FN
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let [ok, what] = args.args.as_slice() else {
            return exec_err!("{FHIR_CHECK_FN} takes a condition and a resource type");
        };
        let what = match what {
            ColumnarValue::Scalar(s) => s.try_as_str().flatten().unwrap_or("FHIR").to_string(),
            ColumnarValue::Array(_) => "FHIR".to_string(),
        };
        let array = ok.to_array(rows)?;
        let Some(ok) = array.as_boolean_opt() else {
            return exec_err!("{FHIR_CHECK_FN} takes a boolean, got {}", array.data_type());
        };
        // A null is not counted as true: an unknown check fails.
        if ok.true_count() != ok.len() {
            return exec_err!("FHIR export invalid: a {what} resource fails its checks");
        }
        Ok(ColumnarValue::Array(array))
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
        let mut texts_of = Vec::with_capacity(categories.len());
        for category in categories {
            let text = match category {
                ColumnarValue::Scalar(s) => s.try_as_str().flatten(),
                ColumnarValue::Array(_) => None,
            };
            let Some(text) = text else {
                return exec_err!("{CATEGORY_INDEX_FN}: categories must be string literals");
            };
            texts_of.push(text);
        }
        let categories = texts_of;
        let index = CategoryLookup::new(&categories)?;
        let array = as_text(value.to_array(args.number_rows)?)?;
        let out: Int32Array = texts(&array)?
            .into_iter()
            .map(|v| v.and_then(|v| index.get(v)))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `array` as text: a string array of any layout as it is (read in place; the planner's
/// VARCHAR is a view, and a cast to one layout would copy every value), anything else as the
/// engine's `CAST(x AS VARCHAR)` writes it (durations, for one, differ from Arrow's default),
/// so values read here match those a SQL cast fitted.
pub(crate) fn as_text(array: ArrayRef) -> DfResult<ArrayRef> {
    Ok(match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => array,
        _ => arrow::compute::cast_with_options(&array, &DataType::Utf8, &DEFAULT_CAST_OPTIONS)?,
    })
}

/// The values of a text array ([`as_text`]'s), in row order.
pub(crate) fn texts(array: &ArrayRef) -> DfResult<Vec<Option<&str>>> {
    Ok(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().collect(),
        DataType::Utf8View => array.as_string_view().iter().collect(),
        other => return exec_err!("{other} is not text"),
    })
}

/// The longest string an Arrow string view holds inline.
const INLINE_BYTES: usize = 12;

/// A set of distinct texts. A text of up to [`INLINE_BYTES`] bytes is kept as the one integer
/// of its string view, so the short values categories and join keys mostly are cost neither an
/// allocation nor a string hash.
#[derive(Debug)]
pub(crate) struct TextSet {
    short: std::collections::HashSet<u128, ViewHasher>,
    long: std::collections::HashSet<String>,
}

impl TextSet {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            short: std::collections::HashSet::with_capacity_and_hasher(n, ViewHasher::seeded()),
            long: std::collections::HashSet::new(),
        }
    }

    pub(crate) fn insert(&mut self, text: &str) {
        match inline_view(text) {
            Some(view) => {
                self.short.insert(view);
            }
            None => {
                if !self.long.contains(text) {
                    self.long.insert(text.to_string());
                }
            }
        }
    }

    /// Inserts every non-null value of `array`, read as text ([`as_text`]).
    pub(crate) fn insert_array(&mut self, array: &ArrayRef) -> DfResult<()> {
        let array = as_text(Arc::clone(array))?;
        texts(&array)?
            .into_iter()
            .flatten()
            .for_each(|v| self.insert(v));
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }

    /// Bytes held beyond the struct itself, roughly.
    pub(crate) fn heap_size(&self) -> usize {
        self.short.capacity() * 16 + self.long.iter().map(|v| v.capacity() + 24).sum::<usize>()
    }

    /// The texts, in no particular order.
    pub(crate) fn to_strings(&self) -> Vec<String> {
        let short = self.short.iter().map(|view| {
            let len = (*view as u32) as usize;
            let bytes = (view >> 32).to_le_bytes();
            String::from_utf8_lossy(&bytes[..len]).into_owned()
        });
        short.chain(self.long.iter().cloned()).collect()
    }
}

/// Categories by position; the first position of a repeated category wins.
struct CategoryLookup<'a> {
    /// Categories of up to [`INLINE_BYTES`] bytes by the view a string array gives them
    /// (length and bytes in one integer). Hashed rather than sorted: a binary search over a few
    /// dozen codes mispredicts a branch at most of its steps, which cost twice the probe.
    short: HashMap<u128, i32, ViewHasher>,
    long: HashMap<&'a str, i32>,
}

impl<'a> CategoryLookup<'a> {
    fn new(categories: &[&'a str]) -> DfResult<Self> {
        let mut short = HashMap::with_capacity_and_hasher(categories.len(), ViewHasher::seeded());
        let mut long = HashMap::new();
        for (i, text) in categories.iter().enumerate() {
            let Ok(i) = i32::try_from(i) else {
                return exec_err!("{CATEGORY_INDEX_FN} takes at most {} categories", i32::MAX);
            };
            match inline_view(text) {
                Some(view) => {
                    short.entry(view).or_insert(i);
                }
                None => {
                    long.entry(*text).or_insert(i);
                }
            }
        }
        Ok(Self { short, long })
    }

    fn get(&self, text: &str) -> Option<i32> {
        match inline_view(text) {
            Some(view) => self.short.get(&view).copied(),
            None => self.long.get(text).copied(),
        }
    }
}

/// Hashes string views (128-bit integers) with one multiply-fold, seeded per process:
/// inserting the 333,201 patient ids of the benchmark's lookup input takes 5-7 ms with it,
/// 14-17 ms with the standard SipHash.
#[derive(Debug, Clone)]
pub(crate) struct ViewHasher {
    seed: u64,
}

impl ViewHasher {
    pub(crate) fn seeded() -> Self {
        use std::hash::BuildHasher as _;
        Self {
            seed: std::collections::hash_map::RandomState::new().hash_one(0u8),
        }
    }
}

impl std::hash::BuildHasher for ViewHasher {
    type Hasher = ViewHash;
    fn build_hasher(&self) -> ViewHash {
        ViewHash(self.seed)
    }
}

pub(crate) struct ViewHash(u64);

impl std::hash::Hasher for ViewHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, x: u64) {
        let folded = u128::from(self.0 ^ x) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (folded as u64) ^ ((folded >> 64) as u64);
    }
    fn write_u128(&mut self, x: u128) {
        self.write_u64(x as u64);
        self.write_u64((x >> 64) as u64);
    }
}

/// The view Arrow gives a string of up to [`INLINE_BYTES`] bytes: its length in the low 32
/// bits, then its bytes, zero-padded. Built from two loads that overlap in the middle (the
/// shared bytes are equal, so OR-ing them is harmless) rather than a copy of variable length,
/// which is a call into `memcpy` per value and was most of a category lookup.
pub(crate) fn inline_view(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    let len = bytes.len();
    let payload: u128 = match len {
        0 => 0,
        1..=3 => {
            let at = |i: usize| u128::from(bytes[i]) << (8 * i);
            at(0) | at(len / 2) | at(len - 1)
        }
        4..=8 => {
            let head = u32::from_le_bytes(bytes[..4].try_into().ok()?);
            let tail = u32::from_le_bytes(bytes[len - 4..].try_into().ok()?);
            u128::from(head) | (u128::from(tail) << (8 * (len - 4)))
        }
        9..=INLINE_BYTES => {
            let head = u64::from_le_bytes(bytes[..8].try_into().ok()?);
            let tail = u64::from_le_bytes(bytes[len - 8..].try_into().ok()?);
            u128::from(head) | (u128::from(tail) << (8 * (len - 8)))
        }
        _ => return None,
    };
    Some((len as u128) | (payload << 32))
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

/// [`age_years`] of two ISO dates (`YYYY-MM-DD`, or a timestamp starting with one), as the
/// online layer computes an age from a record the way a job's `age` rule did.
pub fn age_between(dob: &str, at: &str) -> Option<i64> {
    use chrono::Datelike;
    let day = |s: &str| {
        let date = chrono::NaiveDate::parse_from_str(s.get(..10)?, "%Y-%m-%d").ok()?;
        Some(date.num_days_from_ce() - EPOCH_CE_DAYS)
    };
    age_years(day(dob)?, day(at)?)
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
    use arrow::array::{
        BooleanArray, Date32Array, Decimal128Array, DurationMillisecondArray, DurationSecondArray,
        Float64Array, LargeStringArray, RecordBatch, StringArray, StringViewArray,
        TimestampNanosecondArray,
    };
    use arrow::datatypes::{Field, Int32Type, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionConfig;
    use datafusion::prelude::SessionContext;

    #[test]
    fn options_round_trip_through_their_listed_entries() {
        // What a cluster client sends is `entries()`; what the far side does is `set(key, value)`.
        let mut sent = SessionConfig::new().with_option_extension(EmrflowOptions::default());
        sent.options_mut()
            .set("emrflow.pseudonym_key_id", "00ff")
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
            .map(|o| o.pseudonym_key_id.clone());
        assert_eq!(key.as_deref(), Some("00ff"));
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
    fn inline_view_is_arrows_view_for_every_short_length() {
        let text = "abcdefghijklmnop";
        for len in 0..=text.len() {
            let value = &text[..len];
            let array = StringViewArray::from(vec![value]);
            let expected = (len <= INLINE_BYTES).then(|| array.views()[0]);
            assert_eq!(inline_view(value), expected, "length {len}");
        }
    }

    #[test]
    fn hex_column_matches_the_hex_crate_for_every_byte_and_keeps_nulls() {
        let macs: Vec<[u8; 32]> = (0..8u8)
            .map(|m| std::array::from_fn(|i| m * 32 + i as u8))
            .collect();
        // One present value per MAC, with a null after every third.
        let mut strings: Vec<Option<&str>> = Vec::new();
        for i in 0..macs.len() {
            strings.push(Some("a"));
            if i % 3 == 0 {
                strings.push(None);
            }
        }
        let column = hex_strings(&strings, &macs).unwrap();
        assert_eq!(column.len(), strings.len());
        let mut macs = macs.iter();
        for (i, v) in strings.iter().enumerate() {
            match v {
                Some(_) => assert_eq!(column.value(i), hex::encode(macs.next().unwrap())),
                None => assert!(column.is_null(i)),
            }
        }
        assert!(macs.next().is_none());
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
        assert_eq!(age_between("1960-06-15", "2020-06-14"), Some(59));
        assert_eq!(age_between("1960-06-15", "2020-06-15T08:30:00"), Some(60));
        assert_eq!(age_between("15/06/1960", "2020-06-15"), None);
    }

    #[test]
    fn a_key_must_hold_32_random_bytes_and_is_named_by_a_keyed_id() {
        let short = check_key(b"test-key-0123456789abcdef")
            .err()
            .unwrap_or_default();
        assert!(
            short.contains("25 bytes") && short.contains("32"),
            "{short}"
        );
        // 63 hex digits are 31 bytes; 64 are 32.
        let hex63 = "0123456789abcdef".repeat(4)[..63].to_string();
        assert!(check_key(hex63.as_bytes()).is_err());
        assert!(check_key("0123456789abcdef".repeat(4).as_bytes()).is_ok());
        assert!(check_key(&[7u8; 32]).is_err());
        let patterned = check_key(&b"abcabcabc".repeat(8)).err().unwrap_or_default();
        assert!(patterned.contains("not random"), "{patterned}");
        let raw: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37)).collect();
        assert!(check_key(&raw).is_ok());
        for e in [short, patterned] {
            assert!(!e.contains("test-key") && !e.contains("abcabc"), "{e}");
        }

        use sha2::Digest as _;
        let key = b"0123456789abcdef0123456789abcdef";
        assert_eq!(key_id(key).len(), 64);
        assert_ne!(
            key_id(key),
            hex::encode(Sha256::digest(key)),
            "not a plain hash"
        );
        assert_ne!(key_id(key), key_id(b"0123456789abcdef0123456789abcdeF"));
    }

    #[tokio::test]
    async fn a_session_naming_a_key_this_process_does_not_hold_fails_by_id() {
        let ctx = context();
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .set("emrflow.pseudonym_key_id", "feedface")
            .unwrap_or_else(|e| panic!("{e}"));
        let result = match ctx.sql("SELECT emr_pseudonym('P1')").await {
            Ok(df) => df.collect().await.map(drop),
            Err(e) => Err(e),
        };
        let e = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains("feedface") && e.contains("--pseudonym-key-file"),
            "{e}"
        );
    }

    /// A context as every engine sets one up: emrflow's session options and functions.
    fn context() -> SessionContext {
        let config = SessionConfig::new().with_option_extension(EmrflowOptions::default());
        let mut ctx = SessionContext::new_with_config(config);
        register_functions(&mut ctx).unwrap_or_else(|e| panic!("{e}"));
        ctx
    }

    /// Registers `columns` (plus `id`, the row number) as table `name`: rows `from..from+len`
    /// of one batch. A slice that starts off a byte boundary hands the functions arrays with an
    /// offset into their values and validity bits, as a limit upstream can.
    fn register(
        ctx: &SessionContext,
        name: &str,
        columns: &[(&str, ArrayRef)],
        from: usize,
        len: usize,
    ) {
        let rows = columns.first().map_or(0, |c| c.1.len());
        let ids = Int32Array::from_iter_values(0..i32::try_from(rows).unwrap_or(i32::MAX));
        let mut fields = vec![Field::new("id", DataType::Int32, false)];
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(ids)];
        for (column, array) in columns {
            fields.push(Field::new(*column, array.data_type().clone(), true));
            arrays.push(Arc::clone(array));
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)
            .unwrap_or_else(|e| panic!("{e}"))
            .slice(from, len);
        let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap_or_else(|e| panic!("{e}"));
        ctx.register_table(name, Arc::new(table))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The first column of `sql`'s result.
    async fn first_column(ctx: &SessionContext, sql: &str) -> Vec<ArrayRef> {
        ctx.sql(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|b| Arc::clone(b.column(0)))
            .collect()
    }

    /// The first column of `sql`'s result as Int32 values, in row order.
    async fn int32s(ctx: &SessionContext, sql: &str) -> Vec<Option<i32>> {
        let mut out = Vec::new();
        for array in first_column(ctx, sql).await {
            let Some(values) = array.as_primitive_opt::<Int32Type>() else {
                panic!("{sql}: {} is not Int32", array.data_type());
            };
            out.extend(values.iter());
        }
        out
    }

    /// The first column of `sql`'s result as text, in row order.
    async fn texts(ctx: &SessionContext, sql: &str) -> Vec<Option<String>> {
        let mut out = Vec::new();
        for array in first_column(ctx, sql).await {
            let array = arrow::compute::cast(&array, &DataType::Utf8)
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            out.extend(
                array
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.map(str::to_string)),
            );
        }
        out
    }

    /// A SQL string literal.
    fn quoted(text: &str) -> String {
        format!("'{}'", text.replace('\'', "''"))
    }

    /// Every combination of three conditions (true, false, NULL) twice over: row `r` holds
    /// `of((r / 9) % 3)`, `of((r / 3) % 3)`, `of(r % 3)` with 0 true, 1 false, 2 NULL.
    fn conditions() -> [Vec<Option<bool>>; 3] {
        let of = |k: usize| [Some(true), Some(false), None][k % 3];
        let rows = 0..54usize;
        [
            rows.clone().map(|r| of(r / 9)).collect(),
            rows.clone().map(|r| of(r / 3)).collect(),
            rows.map(of).collect(),
        ]
    }

    #[tokio::test]
    async fn first_true_is_the_position_of_the_earliest_true_argument() {
        // It replaced `CASE WHEN a THEN 0 WHEN b THEN 1 ...` as the drop reason: a row goes
        // for the first reason it meets, a NULL or false condition is not met, and a row that
        // meets none (NULL) is kept. Every combination, whole and from an unaligned slice.
        let ctx = context();
        let [a, b, c] = conditions();
        let columns: Vec<(&str, ArrayRef)> = [("a", &a), ("b", &b), ("c", &c)]
            .into_iter()
            .map(|(n, v)| (n, Arc::new(BooleanArray::from(v.clone())) as ArrayRef))
            .collect();
        register(&ctx, "t", &columns, 0, a.len());
        register(&ctx, "s", &columns, 3, 40);
        let got = int32s(&ctx, "SELECT emr_first_true(a, b, c) FROM t ORDER BY id").await;
        assert_eq!(got.len(), a.len());
        // The rule on its own: every argument true (the earliest wins), several true after a
        // false, NULL or false before the true one, all false, all NULL.
        assert_eq!(got[0], Some(0), "true, true, true");
        assert_eq!(got[9], Some(1), "false, true, true");
        assert_eq!(got[20], Some(1), "NULL, true, NULL");
        assert_eq!(got[21], Some(2), "NULL, false, true");
        assert_eq!(got[15], Some(2), "false, NULL, true");
        assert_eq!(got[13], None, "false, false, false");
        assert_eq!(got[26], None, "NULL, NULL, NULL");
        let expected: Vec<Option<i32>> = (0..a.len())
            .map(|r| {
                [a[r], b[r], c[r]]
                    .iter()
                    .position(|v| *v == Some(true))
                    .and_then(|p| i32::try_from(p).ok())
            })
            .collect();
        assert_eq!(got, expected);
        let case = int32s(
            &ctx,
            "SELECT CAST(CASE WHEN a THEN 0 WHEN b THEN 1 WHEN c THEN 2 END AS INT) FROM t ORDER BY id",
        )
        .await;
        assert_eq!(got, case, "differs from the CASE chain it replaced");
        let sliced = int32s(&ctx, "SELECT emr_first_true(a, b, c) FROM s ORDER BY id").await;
        assert_eq!(sliced, expected[3..43], "from a slice");
    }

    #[tokio::test]
    async fn first_true_takes_scalar_and_computed_arguments() {
        // A condition can fold to a constant (a range check on a literal, a NULL test of a
        // column that cannot be null), so scalars mix with columns.
        let ctx = context();
        let [a, _, _] = conditions();
        let x: Vec<Option<i64>> = (0..a.len() as i64)
            .map(|i| (i % 5 != 0).then_some(i))
            .collect();
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("a", Arc::new(BooleanArray::from(a.clone()))),
            ("x", Arc::new(Int64Array::from(x.clone()))),
        ];
        register(&ctx, "t", &columns, 0, a.len());

        let got = int32s(
            &ctx,
            "SELECT emr_first_true(false, a, true) FROM t ORDER BY id",
        )
        .await;
        let expected: Vec<Option<i32>> = a
            .iter()
            .map(|v| Some(if *v == Some(true) { 1 } else { 2 }))
            .collect();
        assert_eq!(got, expected, "false, a, true");

        let got = int32s(
            &ctx,
            "SELECT emr_first_true(CAST(NULL AS BOOLEAN), a) FROM t ORDER BY id",
        )
        .await;
        let expected: Vec<Option<i32>> =
            a.iter().map(|v| (*v == Some(true)).then_some(1)).collect();
        assert_eq!(got, expected, "NULL, a");

        // Conditions as the planner writes them: unmatched (NULL), then out of range.
        let got = int32s(
            &ctx,
            "SELECT emr_first_true((x IS NULL), (x < 10 OR x > 40)) FROM t ORDER BY id",
        )
        .await;
        let expected: Vec<Option<i32>> = x
            .iter()
            .map(|v| match v {
                None => Some(0),
                Some(v) if *v < 10 || *v > 40 => Some(1),
                Some(_) => None,
            })
            .collect();
        assert_eq!(got, expected, "x IS NULL, x out of range");

        // Only scalars: one row.
        assert_eq!(
            int32s(
                &ctx,
                "SELECT emr_first_true(false, CAST(NULL AS BOOLEAN), true, true)"
            )
            .await,
            vec![Some(2)]
        );
        assert_eq!(
            int32s(&ctx, "SELECT emr_first_true(false, CAST(NULL AS BOOLEAN))").await,
            vec![None]
        );
    }

    /// The values the string tests look up: a NULL, an empty string, one that differs from a
    /// category only in case, one with a NUL byte after a category's text, and texts on
    /// either side of the 12 bytes a string view holds inline (one that shares its first 12
    /// bytes with a 12-byte category).
    const LONG: &str = "a category longer than twelve bytes";
    fn words() -> Vec<Option<&'static str>> {
        vec![
            Some("a"),
            Some("b"),
            Some("c"),
            None,
            Some("zz"),
            Some(""),
            Some(LONG),
            Some("B"),
            Some("a"),
            Some("c"),
            Some(LONG),
            None,
            Some("twelve bytes"),
            Some("twelve bytes!"),
            Some("thirteen byte"),
            Some("a\0"),
        ]
    }

    #[tokio::test]
    async fn category_index_reads_every_string_layout_and_integers() {
        // The encoding's code is the value's position among the fitted categories; a value
        // outside them (or NULL) has none. The planner's VARCHAR is a string view, Parquet
        // inputs can carry Utf8 or LargeUtf8, and each is read in place.
        let ctx = context();
        let words = words();
        let ints: Vec<Option<i64>> = vec![
            Some(1),
            Some(20),
            Some(-3),
            None,
            Some(7),
            Some(0),
            Some(1),
            Some(20),
            Some(-3),
            Some(100),
            None,
            Some(1),
            Some(20),
            None,
            Some(-3),
            Some(5),
        ];
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("s", Arc::new(StringArray::from(words.clone()))),
            ("l", Arc::new(LargeStringArray::from(words.clone()))),
            ("v", Arc::new(StringViewArray::from(words.clone()))),
            ("i", Arc::new(Int64Array::from(ints.clone()))),
        ];
        register(&ctx, "t", &columns, 0, words.len());
        register(&ctx, "sl", &columns, 3, 12);

        let categories = ["b", "a", "c", LONG, "twelve bytes", "thirteen byte"];
        let list = categories.map(quoted).join(", ");
        let expected = vec![
            Some(1),
            Some(0),
            Some(2),
            None,
            None,
            None,
            Some(3),
            None,
            Some(1),
            Some(2),
            Some(3),
            None,
            Some(4),
            None,
            Some(5),
            None,
        ];
        for value in [
            "s",
            "l",
            "v",
            "arrow_cast(s, 'Utf8View')",
            "arrow_cast(s, 'LargeUtf8')",
            "CAST(s AS VARCHAR)",
        ] {
            let sql = format!("SELECT emr_category_index({value}, {list}) FROM t ORDER BY id");
            assert_eq!(int32s(&ctx, &sql).await, expected, "{value}");
            let sql = format!("SELECT emr_category_index({value}, {list}) FROM sl ORDER BY id");
            assert_eq!(int32s(&ctx, &sql).await, expected[3..15], "{value}, sliced");
        }

        // Integers are looked up by their text, as CAST(i AS VARCHAR) fitted them.
        let list = ["-3", "1", "20"].map(quoted).join(", ");
        let expected = vec![
            Some(1),
            Some(2),
            Some(0),
            None,
            None,
            None,
            Some(1),
            Some(2),
            Some(0),
            None,
            None,
            Some(1),
            Some(2),
            None,
            Some(0),
            None,
        ];
        for value in ["i", "arrow_cast(i, 'Int32')"] {
            let sql = format!("SELECT emr_category_index({value}, {list}) FROM t ORDER BY id");
            assert_eq!(int32s(&ctx, &sql).await, expected, "{value}");
        }
    }

    #[tokio::test]
    async fn category_index_gives_a_repeated_category_its_first_position() {
        // Categories come from a fit and are distinct, but nothing stops a caller repeating
        // one; the documented rule is that its first position wins, short or long.
        let ctx = context();
        let words = words();
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("s", Arc::new(StringArray::from(words.clone()))),
            ("v", Arc::new(StringViewArray::from(words.clone()))),
        ];
        register(&ctx, "t", &columns, 0, words.len());
        let list = [
            "x",
            "b",
            "b",
            "a",
            "b",
            "a",
            LONG,
            "twelve bytes",
            LONG,
            "twelve bytes",
            "",
            "",
        ]
        .map(quoted)
        .join(", ");
        let expected: Vec<Option<i32>> = words
            .iter()
            .map(|w| match *w {
                Some("b") => Some(1),
                Some("a") => Some(3),
                Some(LONG) => Some(6),
                Some("twelve bytes") => Some(7),
                Some("") => Some(10),
                _ => None,
            })
            .collect();
        for value in ["s", "v"] {
            let sql = format!("SELECT emr_category_index({value}, {list}) FROM t ORDER BY id");
            assert_eq!(int32s(&ctx, &sql).await, expected, "{value}");
        }
        // A value alone (a constant) is looked up too.
        assert_eq!(
            int32s(&ctx, "SELECT emr_category_index('a', 'a', 'a')").await,
            vec![Some(0)]
        );
        assert_eq!(
            int32s(
                &ctx,
                "SELECT emr_category_index(CAST(NULL AS VARCHAR), 'a')"
            )
            .await,
            vec![None]
        );
    }

    /// Checks that `emr_category_index` finds every non-null value of column `x` of table `t`
    /// among the categories pass 1 would fit for it: the sorted distinct texts of
    /// `CAST(x AS VARCHAR)`, the pipeline's own fit. A value it reads differently from the fit
    /// would be encoded as NULL.
    async fn assert_codes_match_the_fit(ctx: &SessionContext, x: &str) {
        let texts = texts(
            ctx,
            &format!("SELECT CAST({x} AS VARCHAR) FROM t ORDER BY id"),
        )
        .await;
        let mut categories: Vec<String> = texts.iter().flatten().cloned().collect();
        categories.sort();
        categories.dedup();
        let list: Vec<String> = categories.iter().map(|c| quoted(c)).collect();
        let sql = format!(
            "SELECT emr_category_index({x}, {}) FROM t ORDER BY id",
            list.join(", ")
        );
        let got = int32s(ctx, &sql).await;
        let expected: Vec<Option<i32>> = texts
            .iter()
            .map(|t| {
                t.as_ref()
                    .and_then(|t| categories.iter().position(|c| c == t))
                    .and_then(|p| i32::try_from(p).ok())
            })
            .collect();
        assert_eq!(
            got, expected,
            "{x}: codes differ from CAST({x} AS VARCHAR) among {categories:?}"
        );
    }

    #[tokio::test]
    async fn category_index_reads_a_value_as_cast_to_varchar_reads_it() {
        // Encoded columns need not be text: pass 1 fits the categories as
        // `array_agg(DISTINCT CAST(x AS VARCHAR))` and pass 2 looks each value up with
        // `emr_category_index(x, ...)`, so the two must read a value as the same text.
        let ctx = context();
        let floats = Float64Array::from(vec![
            Some(1.0),
            Some(-0.0),
            Some(0.1 + 0.2),
            Some(1e21),
            Some(2.5e-8),
            None,
            Some(f64::NAN),
            Some(1.0),
        ]);
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("f", Arc::new(floats)),
            (
                "b",
                Arc::new(BooleanArray::from(vec![
                    Some(true),
                    Some(false),
                    None,
                    Some(true),
                    Some(false),
                    Some(true),
                    None,
                    Some(false),
                ])),
            ),
            (
                "i",
                Arc::new(Int64Array::from(vec![
                    Some(0),
                    Some(-1),
                    Some(i64::MAX),
                    None,
                    Some(42),
                    Some(0),
                    Some(i64::MIN),
                    Some(42),
                ])),
            ),
            (
                "d",
                Arc::new(
                    Decimal128Array::from(vec![
                        Some(12345),
                        Some(-5),
                        None,
                        Some(0),
                        Some(100),
                        Some(12345),
                        Some(1),
                        Some(-100000),
                    ])
                    .with_precision_and_scale(10, 2)
                    .unwrap_or_else(|e| panic!("{e}")),
                ),
            ),
            (
                "ts",
                Arc::new(TimestampNanosecondArray::from(vec![
                    Some(0),
                    Some(1_600_000_000_123_456_789),
                    None,
                    Some(1_600_000_000_000_000_000),
                    Some(-86_400_000_000_000),
                    Some(0),
                    Some(1),
                    Some(1_600_000_000_000_000_000),
                ])),
            ),
            (
                "dt",
                Arc::new(Date32Array::from(vec![
                    Some(0),
                    Some(19_000),
                    None,
                    Some(-1),
                    Some(19_000),
                    Some(3),
                    Some(4),
                    Some(5),
                ])),
            ),
        ];
        register(&ctx, "t", &columns, 0, 8);
        for x in ["f", "b", "i", "d", "ts", "dt", "arrow_cast(i, 'Utf8View')"] {
            assert_codes_match_the_fit(&ctx, x).await;
        }
    }

    #[tokio::test]
    async fn category_index_reads_a_duration_as_cast_to_varchar_reads_it() {
        // The same agreement for durations (a Parquet input written from Arrow carries them,
        // and `encode.columns` accepts them). DataFusion's CAST writes a duration in its
        // "pretty" form ("0 days 0 hours 1 mins 30 secs", `DEFAULT_CAST_OPTIONS`), Arrow's
        // default cast in ISO 8601 ("PT90S"): reading values with the latter would find none
        // of the fitted categories.
        let ctx = context();
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "s",
                Arc::new(DurationSecondArray::from(vec![
                    Some(0),
                    Some(90),
                    None,
                    Some(86_400),
                    Some(90),
                ])),
            ),
            (
                "ms",
                Arc::new(DurationMillisecondArray::from(vec![
                    Some(1),
                    Some(1_500),
                    Some(-2),
                    None,
                    Some(1),
                ])),
            ),
        ];
        register(&ctx, "t", &columns, 0, 5);
        for x in ["s", "ms"] {
            assert_codes_match_the_fit(&ctx, x).await;
        }
    }

    #[tokio::test]
    async fn pseudonym_is_the_same_for_every_string_layout() {
        // The planner hands `CAST(x AS VARCHAR)` over as a string view, and Parquet inputs can
        // give Utf8 or LargeUtf8; each is read in place. The same text must give the same
        // keyed pseudonym, `pseudonym(key, text)`, whatever its layout, or rows would stop
        // linking across inputs and runs.
        const KEY: &[u8] = b"a 32-byte key for the test run!!";
        let ctx = context();
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .set("emrflow.pseudonym_key_id", &hold_key(KEY))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut values: Vec<Option<String>> = [
            Some("P00000001"),
            Some(""),
            None,
            Some(LONG),
            Some("\u{fc}n\u{ef}c\u{f6}d\u{e9} \u{2713}"),
            None,
            Some("P00000001"),
        ]
        .iter()
        .map(|v| v.map(str::to_string))
        .collect();
        // More values than one batch of hash lanes (1024), NULLs among them: each MAC must
        // land on its own row.
        values.extend((0..2500).map(|i| (i % 7 != 3).then(|| format!("V{i:08}"))));
        let strs: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("s", Arc::new(StringArray::from(strs.clone()))),
            ("l", Arc::new(LargeStringArray::from(strs.clone()))),
            ("v", Arc::new(StringViewArray::from(strs.clone()))),
        ];
        register(&ctx, "t", &columns, 0, values.len());
        register(&ctx, "sl", &columns, 5, 2000);
        let expected: Vec<Option<String>> = values
            .iter()
            .map(|v| v.as_ref().map(|v| pseudonym(KEY, v.as_bytes())))
            .collect();
        assert_eq!(expected[0], expected[6], "same text, same pseudonym");
        assert_ne!(expected[0], expected[1]);
        for value in [
            "s",
            "l",
            "v",
            "arrow_cast(s, 'Utf8View')",
            "arrow_cast(s, 'LargeUtf8')",
            "CAST(s AS VARCHAR)",
            "CAST(l AS VARCHAR)",
        ] {
            let sql = format!("SELECT emr_pseudonym({value}) FROM t ORDER BY id");
            let got = texts(&ctx, &sql).await;
            assert_eq!(got.len(), expected.len(), "{value}");
            for (row, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert_eq!(g, e, "{value}, row {row} ({:?})", values[row]);
            }
            let sql = format!("SELECT emr_pseudonym({value}) FROM sl ORDER BY id");
            assert_eq!(
                texts(&ctx, &sql).await,
                expected[5..2005],
                "{value}, sliced"
            );
        }
    }
}
