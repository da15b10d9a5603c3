//! `emr_categories(x)`: the distinct non-null values of a column as text (as `CAST(x AS
//! VARCHAR)` writes them), in no particular order — what a categorical encoding is fitted on.
//!
//! `array_agg(DISTINCT CAST(x AS VARCHAR))` says the same, but builds a string and a hashed
//! scalar for every row; here a value of up to 12 bytes is hashed as the one integer of its
//! string view and nothing is allocated for a value already seen.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};

use crate::functions::TextSet;

/// Name of the aggregate.
pub const CATEGORIES_FN: &str = "emr_categories";

/// The aggregate: `emr_categories(any) -> list<utf8>`.
pub fn categories_udaf() -> Arc<AggregateUDF> {
    Arc::new(AggregateUDF::new_from_impl(CategoriesUdaf {
        signature: Signature::any(1, Volatility::Immutable),
    }))
}

fn list_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CategoriesUdaf {
    signature: Signature,
}

impl AggregateUDFImpl for CategoriesUdaf {
    fn name(&self) -> &str {
        CATEGORIES_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(list_type())
    }

    fn accumulator(&self, _acc_args: AccumulatorArgs<'_>) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(Categories::new()))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> DfResult<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[categories]", args.name),
            list_type(),
            true,
        ))])
    }
}

#[derive(Debug)]
struct Categories(TextSet);

impl Categories {
    fn new() -> Self {
        Self(TextSet::with_capacity(0))
    }

    fn to_scalar(&self) -> ScalarValue {
        let values: Vec<ScalarValue> = self
            .0
            .to_strings()
            .into_iter()
            .map(|v| ScalarValue::Utf8(Some(v)))
            .collect();
        ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Utf8))
    }
}

impl Accumulator for Categories {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        match values.first() {
            Some(array) => self.0.insert_array(array),
            None => Ok(()),
        }
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let Some(state) = states.first() else {
            return Ok(());
        };
        let Some(lists) = state.as_list_opt::<i32>() else {
            return exec_err!("a partial {CATEGORIES_FN} state is not a list");
        };
        for list in lists.iter().flatten() {
            self.0.insert_array(&list)?;
        }
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![self.to_scalar()])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(self.to_scalar())
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.0.heap_size()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray, StringViewArray};

    use super::*;

    fn sorted(acc: &mut Categories) -> Vec<String> {
        let ScalarValue::List(list) = acc.evaluate().unwrap_or_else(|e| panic!("{e}")) else {
            panic!("not a list");
        };
        let mut out: Vec<String> = list
            .value(0)
            .as_string::<i32>()
            .iter()
            .flatten()
            .map(str::to_string)
            .collect();
        out.sort();
        out
    }

    #[test]
    fn distinct_texts_of_every_layout_merge_across_partitions() {
        // Short values (held as views), a value of exactly 12 and one of 13 bytes sharing its
        // prefix, the empty string, nulls and repeats, split over two partitions whose states
        // merge in a third: the same set as one partition would give.
        let first: ArrayRef = Arc::new(StringArray::from(vec![
            Some("M"),
            None,
            Some("twelve bytes"),
            Some("M"),
            Some(""),
        ]));
        let second: ArrayRef = Arc::new(StringViewArray::from(vec![
            Some("twelve bytes!"),
            Some("F"),
            Some("a category longer than twelve bytes"),
            Some("a category longer than twelve bytes"),
            None,
        ]));
        let mut a = Categories::new();
        a.update_batch(std::slice::from_ref(&first))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut b = Categories::new();
        b.update_batch(std::slice::from_ref(&second))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut last = Categories::new();
        for part in [&mut a, &mut b] {
            let state = part.state().unwrap_or_else(|e| panic!("{e}"))[0]
                .to_array()
                .unwrap_or_else(|e| panic!("{e}"));
            last.merge_batch(&[state]).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut whole = Categories::new();
        whole
            .update_batch(&[first])
            .unwrap_or_else(|e| panic!("{e}"));
        whole
            .update_batch(&[second])
            .unwrap_or_else(|e| panic!("{e}"));
        let want = vec![
            "",
            "F",
            "M",
            "a category longer than twelve bytes",
            "twelve bytes",
            "twelve bytes!",
        ];
        assert_eq!(sorted(&mut last), want);
        assert_eq!(sorted(&mut whole), want);
    }

    #[test]
    fn numbers_are_read_as_their_text() {
        let mut acc = Categories::new();
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(0), Some(1)]));
        acc.update_batch(&[ints]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sorted(&mut acc), vec!["0", "1"]);
        assert!(sorted(&mut Categories::new()).is_empty());
    }
}
