//! Parsing of the tables colex-cli prints, for assertions by column.

use std::collections::BTreeMap;

/// One row of a table printed by colex-cli, by column header.
pub type Row = BTreeMap<String, String>;

/// Splits a `| a | b |` table line into trimmed cells.
fn cells(line: &str) -> Vec<String> {
    line.trim_matches('|').split('|').map(|cell| cell.trim().to_owned()).collect()
}

/// Parses the tables of `list --all-hosts` into rows, each with a `HOST`
/// entry taken from the heading above its table.
pub fn parse_all_hosts(output: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut host = String::new();
    let mut headers: Vec<String> = Vec::new();
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("HOST ") {
            host = rest.split_whitespace().next().unwrap_or_default().to_owned();
            headers.clear();
            continue;
        }
        if !line.starts_with('|') || line.starts_with("|-") {
            continue;
        }
        if headers.is_empty() {
            headers = cells(line);
            continue;
        }
        let mut row: Row = headers.iter().cloned().zip(cells(line)).collect();
        row.insert("HOST".to_owned(), host.clone());
        rows.push(row);
    }
    rows
}

/// Parses one table printed by colex-cli into rows.
pub fn parse_table(output: &str) -> Vec<Row> {
    let mut headers: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for line in output.lines().filter(|line| line.starts_with('|') && !line.starts_with("|-")) {
        if headers.is_empty() {
            headers = cells(line);
        } else {
            rows.push(headers.iter().cloned().zip(cells(line)).collect());
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_HOSTS: &str = "\
HOST h1  address 198.51.100.3  state UP  subnet 10.69.1.0/24  silos 1
|------|----------|
| NAME |    ID    |
|------|----------|
| web  | 0000000a |
|------|----------|

HOST h2  address 198.51.100.4  state UP  subnet 10.69.2.0/24  silos 0
(no silos)
";

    #[test]
    fn all_hosts_rows_carry_host() {
        let rows = parse_all_hosts(ALL_HOSTS);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["NAME"], "web");
        assert_eq!(rows[0]["ID"], "0000000a");
        assert_eq!(rows[0]["HOST"], "h1");
    }

    #[test]
    fn single_table_rows() {
        let rows = parse_table("|---|\n| A | B |\n|---|\n| 1 | 2 |\n|---|\n");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["A"], "1");
        assert_eq!(rows[0]["B"], "2");
    }
}
