# A busybox web server. `colex-cli up examples/hello.hcl` runs it on a host
# of the cluster; relative `path`s are read from this file's folder.
Silo "hello" {
  name  = "hello"
  class = "example"
  tags  = ["web"]

  binary {
    path = "/bin/httpd"
    args = ["-f", "-p", "80", "-h", "/www"]
  }

  file "page" {
    path      = "hello/index.html"
    silo_path = "/www/index.html"
  }
}
