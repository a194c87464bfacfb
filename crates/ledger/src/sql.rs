//! The one SQL layer under every ledger role: a connection to SQLite or to
//! PostgreSQL behind one small interface, so each role is written once.
//!
//! Statements are written once, in the SQL both databases speak, with
//! numbered placeholders `?1`, `?2`, … (SQLite's own; turned into
//! PostgreSQL's `$1`, `$2`, … once per statement). Values cross as
//! [`Param`]s and come back as [`Row`]s: a decimal is bound as `NUMERIC` in
//! PostgreSQL and as exact text in SQLite, and read back exactly from
//! either. Prepared statements are cached per connection on both sides.
//! What the two databases spell differently (an auto-increment key, a
//! bytewise collation) is confined to the schema ([`super::schema`]).
//!
//! Why not a query builder (`sea-query`, diesel's `MultiConnection`): the
//! ledger's statements are plain SQL that both databases accept as written;
//! what differs is binding and reading values, which is this file. It is
//! smaller than either store was alone (see `ARCHITECTURE.md`) and keeps the
//! blocking drivers that the one billing thread needs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use std::borrow::Cow;

use rust_decimal::Decimal;

use super::LedgerError;

/// Which database a connection speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (one file in the data directory).
    Sqlite,
    /// PostgreSQL (replicas).
    Postgres,
}

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Param<'a> {
    /// An integer (`BIGINT`, or `INTEGER` where the column is one).
    Int(i64),
    /// Text (borrowed, or owned by a copy that read it).
    Text(Cow<'a, str>),
    /// An exact decimal (`NUMERIC` in PostgreSQL, text in SQLite).
    Decimal(Decimal),
    /// A boolean (0/1 in SQLite).
    Bool(bool),
    /// Bytes (borrowed, or owned by a copy that read them).
    Bytes(Cow<'a, [u8]>),
    /// SQL `NULL`.
    Null,
    /// SQL `NULL` for an integer column: in a multi-row write its column
    /// stays an integer array even when every value is `NULL`.
    NullInt,
}

impl<'a> Param<'a> {
    /// Borrowed text.
    pub fn text(value: &'a str) -> Self {
        Param::Text(Cow::Borrowed(value))
    }

    /// Borrowed bytes.
    pub fn bytes(value: &'a [u8]) -> Self {
        Param::Bytes(Cow::Borrowed(value))
    }
}

impl From<i64> for Param<'_> {
    fn from(value: i64) -> Self {
        Param::Int(value)
    }
}

impl From<u32> for Param<'_> {
    fn from(value: u32) -> Self {
        Param::Int(i64::from(value))
    }
}

impl From<bool> for Param<'_> {
    fn from(value: bool) -> Self {
        Param::Bool(value)
    }
}

impl From<Decimal> for Param<'_> {
    fn from(value: Decimal) -> Self {
        Param::Decimal(value)
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(value: &'a str) -> Self {
        Param::Text(Cow::Borrowed(value))
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(value: &'a String) -> Self {
        Param::Text(Cow::Borrowed(value))
    }
}

impl From<String> for Param<'_> {
    fn from(value: String) -> Self {
        Param::Text(Cow::Owned(value))
    }
}

impl<'a> From<&'a [u8]> for Param<'a> {
    fn from(value: &'a [u8]) -> Self {
        Param::Bytes(Cow::Borrowed(value))
    }
}

impl From<Vec<u8>> for Param<'_> {
    fn from(value: Vec<u8>) -> Self {
        Param::Bytes(Cow::Owned(value))
    }
}

impl<'a, T: Into<Param<'a>>> From<Option<T>> for Param<'a> {
    fn from(value: Option<T>) -> Self {
        value.map_or(Param::Null, Into::into)
    }
}

/// The parameters of a statement: `params![project, now]`.
macro_rules! params {
    ($($value:expr),* $(,)?) => {
        &[$($crate::sql::Param::from($value)),*][..]
    };
}
pub(crate) use params;

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match self {
            Param::Int(v) => ToSqlOutput::Owned(Value::Integer(*v)),
            Param::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Param::Decimal(v) => ToSqlOutput::Owned(Value::Text(v.to_string())),
            Param::Bool(v) => ToSqlOutput::Owned(Value::Integer(i64::from(*v))),
            Param::Bytes(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
            Param::Null | Param::NullInt => ToSqlOutput::Owned(Value::Null),
        })
    }
}

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Int(v) => match *ty {
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::NUMERIC => Decimal::from(*v).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Param::Text(v) => v.as_ref().to_sql(ty, out),
            Param::Decimal(v) => match *ty {
                Type::NUMERIC => v.to_sql(ty, out),
                _ => v.to_string().to_sql(ty, out),
            },
            Param::Bool(v) => v.to_sql(ty, out),
            Param::Bytes(v) => v.as_ref().to_sql(ty, out),
            Param::Null | Param::NullInt => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in `to_sql`: a mismatch is an error there.
        true
    }

    to_sql_checked!();
}

/// One value read back.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Int(i64),
    Text(String),
    Decimal(Decimal),
    Bool(bool),
    Bytes(Vec<u8>),
}

/// One row read back, whichever database it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(Vec<Cell>);

fn corrupt(what: impl std::fmt::Display) -> LedgerError {
    LedgerError::Corrupt(what.to_string())
}

impl Row {
    fn cell(&self, index: usize) -> Result<&Cell, LedgerError> {
        self.0
            .get(index)
            .ok_or_else(|| corrupt(format!("no column {index} in a row of {}", self.0.len())))
    }

    /// An integer.
    pub fn int(&self, index: usize) -> Result<i64, LedgerError> {
        self.opt_int(index)?
            .ok_or_else(|| corrupt(format!("column {index} is NULL")))
    }

    /// An integer or `NULL`.
    pub fn opt_int(&self, index: usize) -> Result<Option<i64>, LedgerError> {
        match self.cell(index)? {
            Cell::Null => Ok(None),
            Cell::Int(v) => Ok(Some(*v)),
            other => Err(corrupt(format!("column {index}: {other:?} is no integer"))),
        }
    }

    /// Text.
    pub fn text(&self, index: usize) -> Result<String, LedgerError> {
        self.opt_text(index)?
            .ok_or_else(|| corrupt(format!("column {index} is NULL")))
    }

    /// Text or `NULL`.
    pub fn opt_text(&self, index: usize) -> Result<Option<String>, LedgerError> {
        match self.cell(index)? {
            Cell::Null => Ok(None),
            Cell::Text(v) => Ok(Some(v.clone())),
            other => Err(corrupt(format!("column {index}: {other:?} is no text"))),
        }
    }

    /// An exact decimal (`NUMERIC`, or its exact text).
    pub fn decimal(&self, index: usize) -> Result<Decimal, LedgerError> {
        self.opt_decimal(index)?
            .ok_or_else(|| corrupt(format!("column {index} is NULL")))
    }

    /// An exact decimal or `NULL`.
    pub fn opt_decimal(&self, index: usize) -> Result<Option<Decimal>, LedgerError> {
        match self.cell(index)? {
            Cell::Null => Ok(None),
            Cell::Decimal(v) => Ok(Some(*v)),
            Cell::Int(v) => Ok(Some(Decimal::from(*v))),
            Cell::Text(v) => pricing_sdk::parse_decimal(v).map(Some).map_err(corrupt),
            other => Err(corrupt(format!("column {index}: {other:?} is no decimal"))),
        }
    }

    /// A boolean (SQLite's 0/1, PostgreSQL's `BOOLEAN`).
    pub fn bool(&self, index: usize) -> Result<bool, LedgerError> {
        match self.cell(index)? {
            Cell::Bool(v) => Ok(*v),
            Cell::Int(v) => Ok(*v != 0),
            other => Err(corrupt(format!("column {index}: {other:?} is no boolean"))),
        }
    }

    /// Bytes.
    pub fn bytes(&self, index: usize) -> Result<Vec<u8>, LedgerError> {
        match self.cell(index)? {
            Cell::Bytes(v) => Ok(v.clone()),
            Cell::Text(v) => Ok(v.clone().into_bytes()),
            other => Err(corrupt(format!("column {index}: {other:?} is no bytes"))),
        }
    }

    fn from_sqlite(row: &rusqlite::Row<'_>) -> Result<Self, LedgerError> {
        use rusqlite::types::ValueRef;
        let width = row.as_ref().column_count();
        let mut cells = Vec::with_capacity(width);
        for index in 0..width {
            cells.push(match row.get_ref(index)? {
                ValueRef::Null => Cell::Null,
                ValueRef::Integer(v) => Cell::Int(v),
                ValueRef::Text(v) => Cell::Text(String::from_utf8(v.to_vec()).map_err(corrupt)?),
                ValueRef::Blob(v) => Cell::Bytes(v.to_vec()),
                ValueRef::Real(v) => {
                    return Err(corrupt(format!(
                        "column {index}: a float ({v}) in the ledger"
                    )));
                }
            });
        }
        Ok(Row(cells))
    }

    fn from_postgres(row: &postgres::Row) -> Result<Self, LedgerError> {
        let mut cells = Vec::with_capacity(row.len());
        for (index, column) in row.columns().iter().enumerate() {
            let cell = match *column.type_() {
                Type::INT8 => row.try_get::<_, Option<i64>>(index)?.map(Cell::Int),
                Type::INT4 => row
                    .try_get::<_, Option<i32>>(index)?
                    .map(|v| Cell::Int(v.into())),
                Type::INT2 => row
                    .try_get::<_, Option<i16>>(index)?
                    .map(|v| Cell::Int(v.into())),
                Type::BOOL => row.try_get::<_, Option<bool>>(index)?.map(Cell::Bool),
                Type::NUMERIC => row.try_get::<_, Option<Decimal>>(index)?.map(Cell::Decimal),
                Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(index)?.map(Cell::Bytes),
                Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
                    row.try_get::<_, Option<String>>(index)?.map(Cell::Text)
                }
                ref other => {
                    return Err(corrupt(format!(
                        "column {} has type {other}, which the ledger does not use",
                        column.name()
                    )));
                }
            };
            cells.push(cell.unwrap_or(Cell::Null));
        }
        Ok(Row(cells))
    }
}

/// TCP settings for every PostgreSQL connection: a peer that stops
/// answering (a frozen machine, a cut network) makes a call fail within
/// about this long, instead of when the kernel gives up hours later.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub retries: u32,
    /// How long sent data may stay unacknowledged (Linux `TCP_USER_TIMEOUT`).
    pub user_timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            idle: Duration::from_secs(5),
            interval: Duration::from_secs(2),
            retries: 3,
            user_timeout: Duration::from_secs(10),
        }
    }
}

/// A PostgreSQL client with its prepared statements.
struct PgClient {
    client: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
}

impl Drop for PgClient {
    fn drop(&mut self) {
        // The synchronous client blocks on its own runtime when closed,
        // which must not happen on an async thread: close it on its own.
        if let Some(client) = self.client.take() {
            let _ = std::thread::Builder::new()
                .name("postgres-close".into())
                .spawn(move || drop(client));
        }
    }
}

impl PgClient {
    fn client(&mut self) -> &mut postgres::Client {
        self.client.as_mut().expect("a client until dropped")
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, LedgerError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client().prepare(&numbered(sql))?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres(Box<PgClient>),
}

/// A connection to the ledger's database.
pub struct Db {
    inner: Inner,
    /// Multi-row `INSERT` texts made so far, by (head, rows).
    inserts: HashMap<(&'static str, usize), String>,
}

/// Rows one multi-row `INSERT` writes at most.
const INSERT_ROWS: usize = 256;

/// `?N` placeholders as PostgreSQL's `$N` (outside quoted text).
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (None, '\'' | '"') => quoted = Some(c),
            (Some(q), _) if q == c => quoted = None,
            (None, '?') if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

impl Db {
    /// A connection to SQLite.
    pub fn sqlite(connection: rusqlite::Connection) -> Self {
        connection.set_prepared_statement_cache_capacity(64);
        Db {
            inner: Inner::Sqlite(connection),
            inserts: HashMap::new(),
        }
    }

    /// Connects to PostgreSQL at `url`, with `keepalive` on its socket and
    /// the session named `session` (`application_name`).
    pub fn postgres(url: &str, keepalive: Keepalive, session: &str) -> Result<Self, LedgerError> {
        let mut config: postgres::Config = url.parse()?;
        config
            .application_name(session)
            .keepalives(true)
            .keepalives_idle(keepalive.idle)
            .keepalives_interval(keepalive.interval)
            .keepalives_retries(keepalive.retries)
            .tcp_user_timeout(keepalive.user_timeout)
            .connect_timeout(keepalive.user_timeout);
        let client = config.connect(postgres::NoTls)?;
        Ok(Db {
            inner: Inner::Postgres(Box::new(PgClient {
                client: Some(client),
                statements: HashMap::new(),
            })),
            inserts: HashMap::new(),
        })
    }

    /// The database this connection speaks to.
    pub fn dialect(&self) -> Dialect {
        match self.inner {
            Inner::Sqlite(_) => Dialect::Sqlite,
            Inner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs one statement; returns the rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, LedgerError> {
        match &mut self.inner {
            Inner::Sqlite(connection) => {
                let mut statement = connection.prepare_cached(sql)?;
                Ok(statement.execute(rusqlite::params_from_iter(params))? as u64)
            }
            Inner::Postgres(pg) => {
                let statement = pg.statement(sql)?;
                let params: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                Ok(pg.client().execute(&statement, &params)?)
            }
        }
    }

    /// Runs one query; calls `each` with every row, in order.
    pub fn for_each(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        mut each: impl FnMut(Row) -> Result<(), LedgerError>,
    ) -> Result<(), LedgerError> {
        match &mut self.inner {
            Inner::Sqlite(connection) => {
                let mut statement = connection.prepare_cached(sql)?;
                let mut rows = statement.query(rusqlite::params_from_iter(params))?;
                while let Some(row) = rows.next()? {
                    each(Row::from_sqlite(row)?)?;
                }
            }
            Inner::Postgres(pg) => {
                let statement = pg.statement(sql)?;
                let mut rows = pg.client().query_raw(&statement, params.iter())?;
                while let Some(row) =
                    postgres::fallible_iterator::FallibleIterator::next(&mut rows)?
                {
                    each(Row::from_postgres(&row)?)?;
                }
            }
        }
        Ok(())
    }

    /// Every row of one query, each read by `read`, in order.
    pub fn map<T>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        mut read: impl FnMut(&Row) -> Result<T, LedgerError>,
    ) -> Result<Vec<T>, LedgerError> {
        let mut out = Vec::new();
        self.for_each(sql, params, |row| {
            out.push(read(&row)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Every row of one query.
    pub fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, LedgerError> {
        let mut rows = Vec::new();
        self.for_each(sql, params, |row| {
            rows.push(row);
            Ok(())
        })?;
        Ok(rows)
    }

    /// The first row of one query, if any.
    pub fn query_opt(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, LedgerError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The one row of a query that always answers one.
    pub fn query_one(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Row, LedgerError> {
        self.query_opt(sql, params)?
            .ok_or_else(|| corrupt(format!("no row from {sql}")))
    }

    /// Runs statements without parameters (the schema).
    pub fn batch(&mut self, sql: &str) -> Result<(), LedgerError> {
        match &mut self.inner {
            Inner::Sqlite(connection) => connection.execute_batch(sql)?,
            Inner::Postgres(pg) => pg.client().batch_execute(sql)?,
        }
        Ok(())
    }

    /// Runs `work` in one transaction: committed if it returns `Ok`, rolled
    /// back otherwise.
    pub fn transaction<T>(
        &mut self,
        work: impl FnOnce(&mut Db) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        self.batch("BEGIN")?;
        match work(self) {
            Ok(value) => {
                if let Err(e) = self.batch("COMMIT") {
                    let _ = self.batch("ROLLBACK");
                    return Err(e);
                }
                Ok(value)
            }
            Err(e) => {
                // A connection that is gone has nothing to roll back.
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Appends rows of `width` values each (`values`, row after row) with
    /// `head` (`INSERT INTO t (a, b)`), in order: ids follow it. SQLite gets
    /// multi-row `VALUES` of up to 256 rows (the sizes powers of two, so few
    /// statements are prepared); PostgreSQL gets one statement over one
    /// array per column (`UNNEST … WITH ORDINALITY … ORDER BY`), whatever
    /// the number of rows.
    pub fn insert(
        &mut self,
        head: &'static str,
        width: usize,
        values: &[Param<'_>],
    ) -> Result<(), LedgerError> {
        self.rows(head, width, "", true, values)
    }

    /// Inserts or updates rows as [`Db::insert`] with `conflict` (`ON
    /// CONFLICT (…) DO …`), in no particular order: each row names another
    /// key (the caller keeps one row per key), so PostgreSQL sorts nothing.
    pub fn upsert(
        &mut self,
        head: &'static str,
        width: usize,
        conflict: &'static str,
        values: &[Param<'_>],
    ) -> Result<(), LedgerError> {
        self.rows(head, width, conflict, false, values)
    }

    fn rows(
        &mut self,
        head: &'static str,
        width: usize,
        tail: &'static str,
        ordered: bool,
        values: &[Param<'_>],
    ) -> Result<(), LedgerError> {
        debug_assert_eq!(values.len() % width, 0);
        if values.is_empty() {
            return Ok(());
        }
        if let Inner::Postgres(pg) = &mut self.inner {
            let columns = columns(width, values)?;
            let kinds: String = columns.iter().map(Column::kind).collect();
            let key = format!("{head}\u{0}{kinds}\u{0}{tail}");
            let statement = match pg.statements.get(&key) {
                Some(statement) => statement.clone(),
                None => {
                    let sql = unnest_text(head, &columns, tail, ordered);
                    let statement = pg.client().prepare(&sql)?;
                    pg.statements.insert(key, statement.clone());
                    statement
                }
            };
            let params: Vec<&(dyn ToSql + Sync)> =
                columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            pg.client().execute(&statement, &params)?;
            return Ok(());
        }
        let mut rest = values;
        while !rest.is_empty() {
            let rows = rest.len() / width;
            // Full statements, then powers of two: few texts to prepare.
            let take = if rows >= INSERT_ROWS {
                INSERT_ROWS
            } else {
                1 << (usize::BITS - 1 - rows.leading_zeros())
            };
            let sql = self
                .inserts
                .entry((head, take))
                .or_insert_with(|| insert_text(head, width, take, tail))
                .clone();
            let (now, later) = rest.split_at(take * width);
            self.execute(&sql, now)?;
            rest = later;
        }
        Ok(())
    }
}

/// One column of a multi-row insert, as a PostgreSQL array.
#[derive(Debug)]
enum Column<'a> {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<&'a str>>),
    Decimal(Vec<Option<Decimal>>),
    Bool(Vec<Option<bool>>),
    Bytes(Vec<Option<&'a [u8]>>),
}

impl Column<'_> {
    /// A letter per type, for the statement cache.
    fn kind(&self) -> char {
        match self {
            Column::Int(_) => 'i',
            Column::Text(_) => 't',
            Column::Decimal(_) => 'd',
            Column::Bool(_) => 'b',
            Column::Bytes(_) => 'y',
        }
    }

    /// The array's type in SQL.
    fn array_type(&self) -> &'static str {
        match self {
            Column::Int(_) => "bigint[]",
            Column::Text(_) => "text[]",
            Column::Decimal(_) => "numeric[]",
            Column::Bool(_) => "boolean[]",
            Column::Bytes(_) => "bytea[]",
        }
    }
}

impl ToSql for Column<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Column::Int(v) => v.to_sql(ty, out),
            Column::Text(v) => v.to_sql(ty, out),
            Column::Decimal(v) => v.to_sql(ty, out),
            Column::Bool(v) => v.to_sql(ty, out),
            Column::Bytes(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// The columns of rows of `width` values, each typed by its first value
/// that is not `NULL` (a column of `NULL`s only is text, or an integer
/// array when they are [`Param::NullInt`]).
fn columns<'b>(width: usize, values: &'b [Param<'_>]) -> Result<Vec<Column<'b>>, LedgerError> {
    (0..width)
        .map(|column| {
            let cells = || values.iter().skip(column).step_by(width);
            // Every value of the column as `pick` reads it, `NULL` as `None`.
            fn gather<'b, 'a: 'b, T>(
                cells: impl Iterator<Item = &'b Param<'a>>,
                column: usize,
                pick: impl Fn(&'b Param<'a>) -> Option<T>,
            ) -> Result<Vec<Option<T>>, LedgerError> {
                cells
                    .map(|p| match p {
                        Param::Null | Param::NullInt => Ok(None),
                        other => pick(other).map(Some).ok_or_else(|| {
                            corrupt(format!("column {column} mixes types: {other:?}"))
                        }),
                    })
                    .collect()
            }
            let typed = cells().find(|p| !matches!(p, Param::Null | Param::NullInt));
            let typed = match typed {
                None if cells().any(|p| matches!(p, Param::NullInt)) => Some(&Param::Int(0)),
                typed => typed,
            };
            Ok(match typed {
                Some(Param::Int(_)) => Column::Int(gather(cells(), column, |p| match p {
                    Param::Int(v) => Some(*v),
                    _ => None,
                })?),
                Some(Param::Decimal(_)) => Column::Decimal(gather(cells(), column, |p| match p {
                    Param::Decimal(v) => Some(*v),
                    _ => None,
                })?),
                Some(Param::Bool(_)) => Column::Bool(gather(cells(), column, |p| match p {
                    Param::Bool(v) => Some(*v),
                    _ => None,
                })?),
                Some(Param::Bytes(_)) => Column::Bytes(gather(cells(), column, |p| match p {
                    Param::Bytes(v) => Some(v.as_ref()),
                    _ => None,
                })?),
                _ => Column::Text(gather(cells(), column, |p| match p {
                    Param::Text(v) => Some(v.as_ref()),
                    _ => None,
                })?),
            })
        })
        .collect()
}

/// `head SELECT c1, c2 FROM UNNEST($1::t[], $2::t[]) AS u(c1, c2) tail`;
/// `ordered`: `WITH ORDINALITY … ORDER BY`, the rows in order.
fn unnest_text(head: &str, columns: &[Column<'_>], tail: &str, ordered: bool) -> String {
    let names: Vec<String> = (1..=columns.len()).map(|i| format!("c{i}")).collect();
    let arrays: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", i + 1, c.array_type()))
        .collect();
    let (names, arrays) = (names.join(", "), arrays.join(", "));
    if ordered {
        format!(
            "{head} SELECT {names} FROM UNNEST({arrays}) WITH ORDINALITY AS u({names}, i) ORDER BY i {tail}"
        )
    } else {
        format!("{head} SELECT {names} FROM UNNEST({arrays}) AS u({names}) {tail}")
    }
}

/// `head VALUES (?1, ?2), (?3, ?4) tail`.
fn insert_text(head: &str, width: usize, rows: usize, tail: &str) -> String {
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * width * 6);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..width {
            if column > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "?{}", row * width + column + 1);
        }
        sql.push(')');
    }
    sql.push(' ');
    sql.push_str(tail);
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_outside_quotes() {
        assert_eq!(
            numbered("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?12 AND e = \"?3\""),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $12 AND e = \"?3\""
        );
    }

    #[test]
    fn a_multi_row_insert_numbers_every_value() {
        assert_eq!(
            insert_text("INSERT INTO t (a, b)", 2, 2, "ON CONFLICT DO NOTHING"),
            "INSERT INTO t (a, b) VALUES (?1, ?2), (?3, ?4) ON CONFLICT DO NOTHING"
        );
    }

    #[test]
    fn rows_are_inserted_in_order_in_statements_of_every_size() {
        let mut db = Db::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        db.batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, d TEXT NOT NULL)")
            .unwrap();
        for rows in [1usize, 2, 3, 255, 256, 257, 700] {
            db.batch("DELETE FROM t").unwrap();
            let values: Vec<Param<'_>> = (0..rows as i64)
                .flat_map(|v| [Param::Int(v), Param::Decimal(Decimal::new(v, 2))])
                .collect();
            db.insert("INSERT INTO t (v, d)", 2, &values).unwrap();
            let back = db.query("SELECT v, d FROM t ORDER BY id", &[]).unwrap();
            assert_eq!(back.len(), rows);
            for (i, row) in back.iter().enumerate() {
                assert_eq!(row.int(0).unwrap(), i as i64);
                assert_eq!(row.decimal(1).unwrap(), Decimal::new(i as i64, 2));
            }
        }
    }

    #[test]
    fn a_failed_transaction_leaves_nothing() {
        let mut db = Db::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        db.batch("CREATE TABLE t (v INTEGER NOT NULL)").unwrap();
        let failed: Result<(), _> = db.transaction(|db| {
            db.execute("INSERT INTO t (v) VALUES (?1)", params![1i64])?;
            Err(LedgerError::Corrupt("stop".into()))
        });
        assert!(failed.is_err());
        let count = db.query_one("SELECT COUNT(*) FROM t", &[]).unwrap();
        assert_eq!(count.int(0).unwrap(), 0);
    }

    #[test]
    fn a_float_in_the_ledger_is_corrupt_not_rounded() {
        let mut db = Db::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        let row = db.query_one("SELECT 0.1", &[]);
        assert!(matches!(row, Err(LedgerError::Corrupt(_))), "{row:?}");
    }
}
