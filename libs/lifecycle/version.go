package lifecycle

// Version is the release a binary was built from. Release builds (tools/cmd/images) set it at
// link time: -ldflags "-X github.com/portcullis-mesh/portcullis/libs/lifecycle.Version=0.1.0".
// Main logs it once at startup.
var Version = "dev"
