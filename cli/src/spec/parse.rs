//! Reading of a parsed HCL body into `DeclaredSilo`s: every section is checked against its
//! schema and every attribute against its type, and all problems are reported, not only the
//! first.

use hcl_edit::structure::{Block, Body};

use super::declared::{
    block_prefix, silo_prefix, DeclaredBind, DeclaredFile, DeclaredSilo, FileBlockKind,
};
use super::diagnostics::{offset_of, Diagnostics};
use super::reader::AttributeReader;
use super::schema::{self, SILO_IDENTS};
use super::section::{ItemValue, Section};
use super::settings;
use super::value::literal_string;

/// Reads every `Silo` block of a silo file's top-level body.
pub(super) fn read_silos(body: &Body, diagnostics: &mut Diagnostics<'_>) -> Vec<DeclaredSilo> {
    let top_level = Section::from_body(body, 0);
    schema::TOP_LEVEL.check(&top_level, "", diagnostics);

    let mut silos = Vec::new();
    for block in body.blocks() {
        if SILO_IDENTS.contains(&block.ident.as_str()) {
            silos.push(read_silo(block, diagnostics));
        }
    }

    if silos.is_empty() {
        diagnostics.report(0, "no Silo block found; add Silo \"name\" { ... }");
    }
    silos
}

fn read_silo(block: &Block, diagnostics: &mut Diagnostics<'_>) -> DeclaredSilo {
    let header = offset_of(&block.ident);
    let label = block.labels.first().map(|label| label.as_str().to_owned());
    let section = Section::from_body(&block.body, header);

    // Messages name the silo by the name it will run under, so the `name` attribute is read
    // before its type is checked. A name of the wrong type falls back to the label.
    let display_name = section
        .attribute("name")
        .and_then(|(expression, _)| literal_string(expression))
        .or_else(|| label.clone())
        .unwrap_or_default();
    let prefix = silo_prefix(&display_name);

    if let Some(extra) = block.labels.get(1) {
        diagnostics.report(
            offset_of(extra),
            format!(
                "{prefix}a Silo block takes one label, found {}; write Silo \"name\" {{ ... }}",
                block.labels.len()
            ),
        );
    }

    schema::SILO.check(&section, &prefix, diagnostics);

    let mut silo = DeclaredSilo {
        header,
        label,
        ..DeclaredSilo::default()
    };
    let mut reader = AttributeReader::new(&section, &prefix, "", diagnostics);
    silo.name = reader.string("name");
    silo.class = reader.string("class").into_valid().map(|class| class.value);
    silo.tags = reader
        .string_list("tags")
        .into_iter()
        .map(|tag| tag.value)
        .collect();
    silo.base = reader.string("base").into_valid();
    silo.count = reader.integer("count");
    silo.kill_timeout_ms = reader.duration_ms("kill_timeout");

    if silo.label.is_none() && silo.name.is_absent() {
        diagnostics.report(
            header,
            "Silo block has no name; write Silo \"name\" { ... } or add name = \"...\"",
        );
    }

    silo.binary = settings::read_binary(&section, &prefix, diagnostics);
    silo.network = settings::read_network(&section, &prefix, diagnostics);
    silo.grants = settings::read_grants(&section, &prefix, diagnostics);
    silo.resources = settings::read_resources(&section, &prefix, diagnostics);
    silo.placement = settings::read_placement(&section, &prefix, diagnostics);
    silo.restart = settings::read_restart(&section, &prefix, diagnostics);

    for item in &section.items {
        let ItemValue::Block(block) = item.value else {
            continue;
        };
        match block.ident.as_str() {
            "file" => silo
                .files
                .push(read_file(block, FileBlockKind::File, &prefix, diagnostics)),
            "files" => silo
                .files
                .push(read_file(block, FileBlockKind::Tree, &prefix, diagnostics)),
            "bind" => silo.binds.push(read_bind(block, &prefix, diagnostics)),
            _ => {}
        }
    }

    silo.prefix = prefix;
    silo
}

/// Returns the label of a block that takes exactly one, after reporting any other count.
fn single_label(block: &Block, silo_prefix: &str, diagnostics: &mut Diagnostics<'_>) -> String {
    let ident = block.ident.as_str();
    if block.labels.len() != 1 {
        diagnostics.report(
            offset_of(&block.ident),
            format!(
                "{silo_prefix}a {ident} block takes one label, found {}; write {ident} \"name\" {{ ... }}",
                block.labels.len()
            ),
        );
    }
    block
        .labels
        .first()
        .map(|label| label.as_str().to_owned())
        .unwrap_or_default()
}

fn read_file(
    block: &Block,
    kind: FileBlockKind,
    silo_prefix: &str,
    diagnostics: &mut Diagnostics<'_>,
) -> DeclaredFile {
    let header = offset_of(&block.ident);
    let label = single_label(block, silo_prefix, diagnostics);
    let prefix = block_prefix(silo_prefix, kind.ident(), &label);
    let section = Section::from_body(&block.body, header);
    let schema = match kind {
        FileBlockKind::File => &schema::FILE,
        FileBlockKind::Tree => &schema::FILES,
    };
    schema.check(&section, &prefix, diagnostics);

    let mut reader = AttributeReader::new(&section, &prefix, "", diagnostics);
    let path = reader.string("path");
    let silo_path = reader.string("silo_path");
    DeclaredFile {
        header,
        kind,
        label,
        prefix,
        path,
        silo_path,
    }
}

fn read_bind(block: &Block, silo_prefix: &str, diagnostics: &mut Diagnostics<'_>) -> DeclaredBind {
    let header = offset_of(&block.ident);
    let label = single_label(block, silo_prefix, diagnostics);
    let prefix = block_prefix(silo_prefix, "bind", &label);
    let section = Section::from_body(&block.body, header);
    schema::BIND.check(&section, &prefix, diagnostics);

    let mut reader = AttributeReader::new(&section, &prefix, "", diagnostics);
    let id = reader.string("id");
    let path = reader.string("path");
    DeclaredBind {
        header,
        label,
        prefix,
        id,
        path,
    }
}
