package platform

import (
	"fmt"
	"maps"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// The environment properties Elastic Beanstalk sets for an attached RDS
// database.
const (
	RDSHostname = "RDS_HOSTNAME"
	RDSPort     = "RDS_PORT"
	RDSDBName   = "RDS_DB_NAME"
	RDSUsername = "RDS_USERNAME"
	RDSPassword = "RDS_PASSWORD"
	RDSEngine   = "RDS_ENGINE"
	DatabaseURL = "DATABASE_URL"
)

// schemes maps RDS engines and URL schemes to a DATABASE_URL scheme.
var schemes = map[string]string{
	"postgres": "postgres", "postgresql": "postgres", "aurora-postgresql": "postgres",
	"mysql": "mysql", "aurora": "mysql", "aurora-mysql": "mysql", "mariadb": "mysql",
}

var defaultPorts = map[string]string{"postgres": "5432", "mysql": "3306"}

// Effective is the environment a container and its hooks get: the
// bundle's properties, then the app's own (set with `sprout setenv`),
// which win, and DATABASE_URL built from the RDS_* properties unless it
// is set.
func Effective(bundle, app map[string]string) map[string]string {
	env := maps.Clone(bundle)
	if env == nil {
		env = map[string]string{}
	}
	maps.Copy(env, app)
	if _, ok := env[DatabaseURL]; !ok {
		if u := databaseURL(env); u != "" {
			env[DatabaseURL] = u
		}
	}
	return env
}

// databaseURL builds DATABASE_URL from RDS_* properties, "" when there is
// no RDS_HOSTNAME. The scheme comes from RDS_ENGINE, else the port, else
// postgres.
func databaseURL(env map[string]string) string {
	host := env[RDSHostname]
	if host == "" {
		return ""
	}
	port := env[RDSPort]
	scheme := schemes[strings.ToLower(env[RDSEngine])]
	if scheme == "" {
		scheme = "postgres"
		if port == "3306" {
			scheme = "mysql"
		}
	}
	if port == "" {
		port = defaultPorts[scheme]
	}
	u := url.URL{Scheme: scheme, Host: net.JoinHostPort(host, port), Path: "/" + env[RDSDBName]}
	if user := env[RDSUsername]; user != "" {
		if pw, ok := env[RDSPassword]; ok {
			u.User = url.UserPassword(user, pw)
		} else {
			u.User = url.User(user)
		}
	}
	return u.String()
}

// ParseRDS turns a database URL (postgres://user:pass@host:5432/db) into
// the six RDS_* properties, as `sprout setenv --rds` sets them.
func ParseRDS(raw string) (map[string]string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: --rds: %v", ErrInvalidEnv, err)
	}
	scheme := schemes[strings.ToLower(u.Scheme)]
	if scheme == "" {
		return nil, fmt.Errorf("%w: --rds: scheme %q is not postgres, postgresql, mysql or mariadb (write it as postgres://user:password@host:5432/dbname)", ErrInvalidEnv, u.Scheme)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return nil, fmt.Errorf("%w: --rds: no host (write it as %s://user:password@host:%s/dbname)", ErrInvalidEnv, u.Scheme, defaultPorts[scheme])
	}
	if port == "" {
		port = defaultPorts[scheme]
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return nil, fmt.Errorf("%w: --rds: port %q is not a port number", ErrInvalidEnv, port)
	}
	db := strings.TrimPrefix(u.Path, "/")
	if db == "" || strings.Contains(db, "/") {
		return nil, fmt.Errorf("%w: --rds: name one database after the host, as in %s://user:password@%s/dbname", ErrInvalidEnv, u.Scheme, u.Host)
	}
	if u.User == nil || u.User.Username() == "" {
		return nil, fmt.Errorf("%w: --rds: no user name (write it as %s://user:password@%s/%s)", ErrInvalidEnv, u.Scheme, u.Host, db)
	}
	pw, _ := u.User.Password()
	return map[string]string{
		RDSHostname: host, RDSPort: port, RDSDBName: db,
		RDSUsername: u.User.Username(), RDSPassword: pw, RDSEngine: scheme,
	}, nil
}
