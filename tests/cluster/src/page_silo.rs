//! A silo file the controller tests share: a busybox httpd silo that serves a page with its own
//! name, so each fetch shows which silo served it.

use crate::Lab;

/// Returns the silo file of a busybox httpd silo named `name` that serves the page
/// `NAME.html` from the lab folder.
pub fn page_silo_file(name: &str) -> String {
    format!(
        r#"
Silo "{name}" {{
  name = "{name}"

  binary {{
    path = "/bin/httpd"
    args = ["-f", "-p", "80", "-h", "/www"]
  }}

  file "page" {{
    path      = "{name}.html"
    silo_path = "/www/index.html"
  }}
}}
"#
    )
}

impl Lab {
    /// Writes the silo file of silo `name` and its page ("page of NAME") into the lab folder,
    /// and returns the silo file's path.
    pub fn write_page_silo(&self, name: &str) -> String {
        self.write_file(&format!("{name}.html"), &format!("page of {name}\n"))
            .expect("write page");
        self.write_file(&format!("{name}.hcl"), &page_silo_file(name))
            .expect("write silo file")
            .display()
            .to_string()
    }
}
