package internal
import (
 _ "github.com/hashicorp/raft"
 _ "github.com/hashicorp/raft-boltdb/v2"
 _ "github.com/hashicorp/memberlist"
 _ "github.com/hashicorp/go-hclog"
 _ "github.com/klauspost/compress/zstd"
 _ "golang.org/x/sys/unix"
)
