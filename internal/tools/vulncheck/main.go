// Command vulncheck is the project's side of the govulncheck check that .ci/vulncheck runs.
//
//	vulncheck db -osv DIR -out DIR
//
// builds an offline vulnerability database in the layout govulncheck reads from a file://
// URL (index/db.json, index/modules.json, ID/<id>.json) out of the OSV files that the
// golang.org/x/vulndb module carries in data/osv. The module comes through the Go module
// proxy, so the check needs no access to vuln.go.dev.
//
//	vulncheck judge -db DIR -dockerfile FILE < govulncheck.json
//
// reads `govulncheck -format json` output and decides: a vulnerability in a third-party
// module that the code calls fails (exit 1); standard-library findings for the Go that ran
// the scan are reported, with the patch release that fixes them, and do not fail. It then
// checks the Go release the Dockerfile builds with against every standard-library and
// toolchain entry in the database: a known vulnerability that a later patch of the same
// Go line fixes fails, one with no fix released yet is reported.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// errFindings reports that judge found something that must fail the build; the details
// have been printed already.
var errFindings = errors.New("vulncheck: findings fail the build")

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	usage := func() {
		fmt.Fprintln(stderr, "usage: vulncheck db -osv DIR -out DIR")
		fmt.Fprintln(stderr, "       vulncheck judge -db DIR -dockerfile FILE < govulncheck.json")
	}
	if len(args) == 0 {
		usage()
		return 2
	}
	var err error
	switch args[0] {
	case "db":
		fs := flag.NewFlagSet("db", flag.ContinueOnError)
		fs.SetOutput(stderr)
		osvDir := fs.String("osv", "", "directory of OSV JSON files (data/osv of golang.org/x/vulndb)")
		out := fs.String("out", "", "directory to write the database to; must not exist or be empty")
		if fs.Parse(args[1:]) != nil {
			return 2
		}
		if *osvDir == "" || *out == "" {
			fmt.Fprintln(stderr, "vulncheck db: -osv and -out are required")
			return 2
		}
		var n int
		n, err = buildDB(*osvDir, *out)
		if err == nil {
			fmt.Fprintf(stdout, "vulncheck: database of %d entries written to %s\n", n, *out)
		}
	case "judge":
		fs := flag.NewFlagSet("judge", flag.ContinueOnError)
		fs.SetOutput(stderr)
		db := fs.String("db", "", "database directory written by `vulncheck db`")
		dockerfile := fs.String("dockerfile", "", "Dockerfile whose golang image is checked against the database")
		if fs.Parse(args[1:]) != nil {
			return 2
		}
		if *db == "" || *dockerfile == "" {
			fmt.Fprintln(stderr, "vulncheck judge: -db and -dockerfile are required")
			return 2
		}
		err = judge(stdin, stdout, *db, *dockerfile)
	default:
		usage()
		return 2
	}
	if errors.Is(err, errFindings) {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	return 0
}
