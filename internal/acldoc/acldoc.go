// Package acldoc reads the ACL SETUSER lines of docs/SECURITY.md: the one
// definition of the Redis rights of each ackd role (producer, consumer,
// admin, daemon), for every queue and for one queue. Tests define their
// Redis users from it, so the document cannot drift from what the code
// needs.
package acldoc

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
)

// User is one ACL SETUSER line.
type User struct {
	Name     string   // e.g. ackd-consumer, ackd-consumer-orders
	Role     string   // producer, consumer, admin or daemon
	Password string   // from the >password rule
	Rules    []string // everything after the user name
}

// Grants lists the rules that give a right (+command, ~keys, %R~keys,
// &channel), in the order of the line.
func (u User) Grants() []string {
	var out []string
	for _, r := range u.Rules {
		if strings.HasPrefix(r, "+") || strings.HasPrefix(r, "~") ||
			strings.HasPrefix(r, "%") || strings.HasPrefix(r, "&") {
			out = append(out, r)
		}
	}
	return out
}

// Without returns the rules minus one of them.
func (u User) Without(rule string) []string {
	return slices.DeleteFunc(slices.Clone(u.Rules), func(s string) bool { return s == rule })
}

var lineRE = regexp.MustCompile(`^ACL SETUSER (ackd-(producer|consumer|admin|daemon)(?:-[a-z]+)?) (.+)$`)

// Roles are the roles every document must define, for every queue
// (ackd-<role>) and for the queue "orders" (ackd-<role>-orders).
var Roles = []string{"producer", "consumer", "admin", "daemon"}

// Read parses every ACL SETUSER line of the document at path (a line on
// its own, as in the document's code blocks) and checks that each role is
// defined for every queue and for one.
func Read(path string) (map[string]User, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	users := map[string]User{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		m := lineRE.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		u := User{Name: m[1], Role: m[2], Rules: strings.Fields(m[3])}
		for _, r := range u.Rules {
			if p, ok := strings.CutPrefix(r, ">"); ok {
				u.Password = p
			}
		}
		if u.Password == "" || u.Rules[0] != "reset" {
			return nil, fmt.Errorf("%s: %s: want reset first and a >password", path, m[0])
		}
		if _, dup := users[u.Name]; dup {
			return nil, fmt.Errorf("%s: user %s defined twice", path, u.Name)
		}
		users[u.Name] = u
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, r := range Roles {
		for _, name := range []string{"ackd-" + r, "ackd-" + r + "-orders"} {
			if _, ok := users[name]; !ok {
				return nil, fmt.Errorf("%s: no ACL SETUSER line for %s", path, name)
			}
		}
	}
	return users, nil
}
