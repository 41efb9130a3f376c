//! Building blocks for the event schema: value kinds, their Arrow builders, and the
//! `cloudtrail_object!` macro that declares each CloudTrail JSON object exactly once and
//! derives from that one list its borrowing parser, its Arrow fields and its column builder.
//!
//! Why hand-rolled rather than `serde(derive)` or `arrow-json`: the parser must (1) borrow
//! strings from the input buffer for speed, (2) keep keys it does not know (AWS adds fields
//! over time and nothing may be dropped silently), (3) coerce known drifts (`readOnly: "True"`)
//! and (4) fail one record, naming the field, on a real type error. `arrow-json` fails a whole
//! batch on the first bad record and cannot keep free-form JSON as text.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use arrow::array::NullBufferBuilder;
use arrow::array::{ArrayRef, BooleanBuilder, ListArray, StringBuilder, StructArray, TimestampMicrosecondBuilder};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_json::value::RawValue;

/// A JSON string that borrows from the input when it has no escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Str<'a>(pub Cow<'a, str>);

impl<'a> Str<'a> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A boolean that CloudTrail exports sometimes carry as a string ("true", "True", "false").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a boolean or the string \"true\"/\"false\"")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Flag, E> {
                if v.eq_ignore_ascii_case("true") {
                    Ok(Flag(true))
                } else if v.eq_ignore_ascii_case("false") {
                    Ok(Flag(false))
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A field documented as a string that real logs also carry as a boolean or number
/// (`mfaAuthenticated`, `sessionCredentialFromConsole`): kept as its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, boolean or number")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(if v { "true" } else { "false" })))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

/// Keys a record carried that the schema has no column for, by JSON path
/// (`userIdentity.newField`, `resources[2].tag`), with their raw JSON values.
pub type Extras<'a> = Vec<(String, &'a RawValue)>;

/// Recursion into nested objects to collect their unknown keys. `path` is the value's JSON
/// path, extended in place and restored on return: paths are built only for the keys found
/// (nearly every record has none), not for every field of every record.
pub trait CollectExtras<'a> {
    fn collect_extras(&self, _path: &mut String, _out: &mut Extras<'a>) {}
}
impl<'a> CollectExtras<'a> for Str<'a> {}
impl<'a> CollectExtras<'a> for Text<'a> {}
impl<'a> CollectExtras<'a> for &'a RawValue {}
impl<'a> CollectExtras<'a> for Flag {}
impl<'a, T: CollectExtras<'a>> CollectExtras<'a> for Vec<T> {
    fn collect_extras(&self, path: &mut String, out: &mut Extras<'a>) {
        let len = path.len();
        for (i, item) in self.iter().enumerate() {
            use std::fmt::Write as _;
            let _ = write!(path, "[{i}]");
            item.collect_extras(path, out);
            path.truncate(len);
        }
    }
}

/// An Arrow builder for one column kind.
pub trait ColumnBuilder: Default {
    fn data_type() -> DataType;
    fn finish(&mut self) -> ArrayRef;
}

/// Appending a parsed value (or its absence) to a builder.
pub trait AppendValue<V: ?Sized> {
    fn append_value_opt(&mut self, v: Option<&V>);
}

#[derive(Default)]
pub struct Utf8B(pub StringBuilder);
impl ColumnBuilder for Utf8B {
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn finish(&mut self) -> ArrayRef {
        Arc::new(finish_strings(&mut self.0))
    }
}

/// Finishes a string column and leaves the builder with room for as much again: arrow's
/// `finish` leaves it empty, and regrowing every column by doubling for each batch of a
/// parser copied and faulted in its bytes about twice more (memmove led the ingest profile).
pub fn finish_strings(builder: &mut StringBuilder) -> arrow::array::StringArray {
    let (items, bytes) = (arrow::array::ArrayBuilder::len(builder), builder.values_slice().len());
    let array = builder.finish();
    *builder = StringBuilder::with_capacity(items, bytes);
    array
}
impl AppendValue<Str<'_>> for Utf8B {
    fn append_value_opt(&mut self, v: Option<&Str<'_>>) {
        self.0.append_option(v.map(|s| s.as_str()))
    }
}
impl AppendValue<Text<'_>> for Utf8B {
    fn append_value_opt(&mut self, v: Option<&Text<'_>>) {
        self.0.append_option(v.map(|s| &*s.0))
    }
}
impl AppendValue<&RawValue> for Utf8B {
    fn append_value_opt(&mut self, v: Option<&&RawValue>) {
        self.0.append_option(v.map(|r| r.get()))
    }
}

#[derive(Default)]
pub struct BoolB(pub BooleanBuilder);
impl ColumnBuilder for BoolB {
    fn data_type() -> DataType {
        DataType::Boolean
    }
    fn finish(&mut self) -> ArrayRef {
        Arc::new(self.0.finish())
    }
}
impl AppendValue<Flag> for BoolB {
    fn append_value_opt(&mut self, v: Option<&Flag>) {
        self.0.append_option(v.map(|f| f.0))
    }
}

/// `eventtime`: the record's time string, already validated, as a UTC microsecond timestamp.
#[derive(Default)]
pub struct TimeB(pub TimestampMicrosecondBuilder);
impl ColumnBuilder for TimeB {
    fn data_type() -> DataType {
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    }
    fn finish(&mut self) -> ArrayRef {
        Arc::new(self.0.finish().with_timezone("UTC"))
    }
}
impl AppendValue<Str<'_>> for TimeB {
    fn append_value_opt(&mut self, v: Option<&Str<'_>>) {
        self.0.append_option(v.and_then(|s| super::time::parse_event_time(s.as_str())))
    }
}

/// A list of objects (`resources`).
pub struct ListB<B> {
    items: B,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
}
impl<B: Default> Default for ListB<B> {
    fn default() -> Self {
        ListB { items: B::default(), offsets: vec![0], nulls: NullBufferBuilder::new(0) }
    }
}
impl<B: ColumnBuilder> ColumnBuilder for ListB<B> {
    fn data_type() -> DataType {
        DataType::List(Arc::new(Field::new_list_field(B::data_type(), true)))
    }
    fn finish(&mut self) -> ArrayRef {
        let values = self.items.finish();
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        let field = Arc::new(Field::new_list_field(B::data_type(), true));
        Arc::new(ListArray::new(field, OffsetBuffer::new(offsets.into()), values, self.nulls.finish()))
    }
}
impl<T, B: AppendValue<T>> AppendValue<Vec<T>> for ListB<B> {
    fn append_value_opt(&mut self, v: Option<&Vec<T>>) {
        let last = self.offsets.last().copied().unwrap_or(0);
        match v {
            Some(items) => {
                for item in items {
                    self.items.append_value_opt(Some(item));
                }
                self.offsets.push(last + items.len() as i32);
                self.nulls.append_non_null();
            }
            None => {
                self.offsets.push(last);
                self.nulls.append_null();
            }
        }
    }
}

/// Finishes a struct column from its children and validity.
pub fn finish_struct(fields: Fields, children: Vec<ArrayRef>, nulls: &mut NullBufferBuilder) -> ArrayRef {
    Arc::new(StructArray::new(fields, children, nulls.finish()))
}

/// Maps a field kind to the Rust type that holds its parsed value.
macro_rules! value_ty {
    ($lt:lifetime, str) => { $crate::schema::fields::Str<$lt> };
    ($lt:lifetime, time) => { $crate::schema::fields::Str<$lt> };
    ($lt:lifetime, text) => { $crate::schema::fields::Text<$lt> };
    ($lt:lifetime, json) => { &$lt serde_json::value::RawValue };
    ($lt:lifetime, flag) => { $crate::schema::fields::Flag };
    ($lt:lifetime, obj $t:ident $b:ident) => { $t<$lt> };
    ($lt:lifetime, list $t:ident $b:ident) => { Vec<$t<$lt>> };
}

/// Whether a field kind can hold keys of its own (objects, lists of objects).
macro_rules! nested {
    (obj $t:ident $b:ident) => {
        true
    };
    (list $t:ident $b:ident) => {
        true
    };
    ($kind:ident) => {
        false
    };
}

/// Maps a field kind to its Arrow builder.
macro_rules! builder_ty {
    (str) => { $crate::schema::fields::Utf8B };
    (time) => { $crate::schema::fields::TimeB };
    (text) => { $crate::schema::fields::Utf8B };
    (json) => { $crate::schema::fields::Utf8B };
    (flag) => { $crate::schema::fields::BoolB };
    (obj $t:ident $b:ident) => { $b };
    (list $t:ident $b:ident) => { $crate::schema::fields::ListB<$b> };
}

/// Declares one CloudTrail JSON object: `rust_field: kind = "jsonKey" => "column"`.
/// Generates the parsed struct `$name<'a>` (borrowing, with unknown keys kept in `extra`)
/// and its column builder `$builder`.
macro_rules! cloudtrail_object {
    ($(#[$meta:meta])* $name:ident, $builder:ident {
        $($field:ident : $kind:ident $($arg:ident)* = $json:literal => $col:literal),* $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name<'a> {
            $(pub $field: Option<$crate::schema::fields::value_ty!('a, $kind $($arg)*)>,)*
            /// Keys this schema has no column for, with their raw values.
            pub extra: Vec<($crate::schema::fields::Str<'a>, &'a serde_json::value::RawValue)>,
        }

        impl<'a> $name<'a> {
            /// The JSON keys this object maps to columns.
            #[allow(dead_code)]
            pub const JSON_KEYS: &'static [&'static str] = &[$($json),*];

            /// Arrow fields of this object's columns, in declaration order.
            pub fn arrow_fields() -> arrow::datatypes::Fields {
                use $crate::schema::fields::ColumnBuilder;
                vec![$(arrow::datatypes::Field::new($col, <$crate::schema::fields::builder_ty!($kind $($arg)*)>::data_type(), true)),*].into()
            }
        }

        impl<'a> $crate::schema::fields::CollectExtras<'a> for $name<'a> {
            fn collect_extras(&self, path: &mut String, out: &mut $crate::schema::fields::Extras<'a>) {
                let len = path.len();
                let push = |path: &mut String, key: &str| {
                    if len > 0 {
                        path.push('.');
                    }
                    path.push_str(key);
                };
                for (k, v) in &self.extra {
                    push(path, k.as_str());
                    out.push((path.clone(), *v));
                    path.truncate(len);
                }
                $(
                    if $crate::schema::fields::nested!($kind $($arg)*) && let Some(v) = &self.$field {
                        push(path, $json);
                        $crate::schema::fields::CollectExtras::collect_extras(v, path, out);
                        path.truncate(len);
                    }
                )*
            }
        }

        impl<'de> serde::Deserialize<'de> for $name<'de> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $name<'de>;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str(concat!("a JSON object (", stringify!($name), ")"))
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                        use serde::de::Error as _;
                        let mut out = $name::default();
                        while let Some(key) = map.next_key::<$crate::schema::fields::Str<'de>>()? {
                            match key.as_str() {
                                $($json => {
                                    out.$field = map
                                        .next_value::<Option<$crate::schema::fields::value_ty!('de, $kind $($arg)*)>>()
                                        .map_err(|e| A::Error::custom(format_args!("{}: {}", $json, e)))?;
                                })*
                                _ => {
                                    let v: &'de serde_json::value::RawValue = map.next_value()?;
                                    out.extra.push((key, v));
                                }
                            }
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(V)
            }
        }

        /// Column builder for this object.
        pub struct $builder {
            nulls: arrow::array::NullBufferBuilder,
            $($field: $crate::schema::fields::builder_ty!($kind $($arg)*),)*
        }

        impl Default for $builder {
            fn default() -> Self {
                $builder {
                    nulls: arrow::array::NullBufferBuilder::new(0),
                    $($field: Default::default(),)*
                }
            }
        }

        impl $builder {
            /// Appends every column of one object, or nulls when it is absent.
            #[allow(dead_code)]
            pub fn append_columns(&mut self, v: Option<&$name<'_>>) {
                use $crate::schema::fields::AppendValue;
                $(self.$field.append_value_opt(v.and_then(|v| v.$field.as_ref()));)*
            }
            /// The finished child columns, in declaration order.
            pub fn finish_columns(&mut self) -> Vec<arrow::array::ArrayRef> {
                use $crate::schema::fields::ColumnBuilder;
                vec![$(self.$field.finish()),*]
            }
        }

        impl $crate::schema::fields::ColumnBuilder for $builder {
            fn data_type() -> arrow::datatypes::DataType {
                arrow::datatypes::DataType::Struct($name::arrow_fields())
            }
            fn finish(&mut self) -> arrow::array::ArrayRef {
                let children = self.finish_columns();
                $crate::schema::fields::finish_struct($name::arrow_fields(), children, &mut self.nulls)
            }
        }

        impl<'a> $crate::schema::fields::AppendValue<$name<'a>> for $builder {
            fn append_value_opt(&mut self, v: Option<&$name<'a>>) {
                match v {
                    Some(_) => self.nulls.append_non_null(),
                    None => self.nulls.append_null(),
                }
                self.append_columns(v);
            }
        }
    };
}

pub(crate) use {builder_ty, cloudtrail_object, nested, value_ty};
