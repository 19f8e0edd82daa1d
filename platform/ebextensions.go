package platform

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// ExtensionsDir holds a bundle's .ebextensions/*.config files.
const ExtensionsDir = ".ebextensions"

// Namespaces of option_settings that apply to one host.
const (
	NSEnvironment = "aws:elasticbeanstalk:application:environment"
	NSApplication = "aws:elasticbeanstalk:application"
	NSCommand     = "aws:elasticbeanstalk:command"
	NSProxy       = "aws:elasticbeanstalk:environment:proxy"
	// NSTrafficSplitting sets TrafficSplitting's canary share and time.
	NSTrafficSplitting = "aws:elasticbeanstalk:trafficsplitting"
)

// Options are the option_settings of a bundle's .ebextensions that apply
// to one host. They are kept with the version; settings made with
// `sprout setenv` and deploy flags win over them, as on Elastic Beanstalk.
type Options struct {
	// Env holds environment properties.
	Env map[string]string `json:"env,omitempty"`
	// HealthPath is the Application Healthcheck URL's path.
	HealthPath string `json:"health_path,omitempty"`
	Deploy     Policy `json:"deploy,omitzero"`
	// ProxyNone is ProxyServer: none: the container's port is published
	// straight on the app's public port, without Sprout's proxy.
	ProxyNone bool `json:"proxy_none,omitempty"`
}

// Policy holds aws:elasticbeanstalk:command.
type Policy struct {
	DeploymentPolicy string `json:"deployment_policy,omitempty"`
	BatchSizeType    string `json:"batch_size_type,omitempty"`
	BatchSize        int    `json:"batch_size,omitempty"`
	// Timeout bounds a deploy from unpack to swap.
	Timeout time.Duration `json:"timeout,omitempty"`
	// IgnoreHealthCheck swaps in a version whose health check still fails
	// at the deadline, as long as its container runs.
	IgnoreHealthCheck bool `json:"ignore_health_check,omitempty"`
	// NewVersionPercent and EvaluationTime are TrafficSplitting's
	// (aws:elasticbeanstalk:trafficsplitting).
	NewVersionPercent int           `json:"new_version_percent,omitempty"`
	EvaluationTime    time.Duration `json:"evaluation_time,omitempty"`
}

var (
	deploymentPolicies = []string{"AllAtOnce", "Rolling", "RollingWithAdditionalBatch", "Immutable", "TrafficSplitting"}
	batchSizeTypes     = []string{"Percentage", "Fixed"}
	proxyServers       = []string{"nginx", "apache", "none"}
	commandOptions     = []string{"DeploymentPolicy", "BatchSizeType", "BatchSize", "Timeout", "IgnoreHealthCheck"}
	// Sections of a .config file that Sprout does not run, with why.
	otherSections = map[string]string{
		"packages": "host packages", "groups": "host groups", "users": "host users", "sources": "host downloads",
		"files": "host files", "commands": "host commands", "container_commands": "host commands",
		"services": "host services", "Resources": "AWS resources", "Outputs": "AWS resources",
		"Parameters": "AWS resources", "Mappings": "AWS resources", "Conditions": "AWS resources",
	}
)

// ReadExtensions reads every .ebextensions/*.config of the bundle rooted
// at dir, in lexical order; a later file's setting wins. Notes say what
// was ignored and why. Errors name the file, the line and the fix.
func ReadExtensions(dir string) (*Options, []string, error) {
	files, err := filepath.Glob(filepath.Join(dir, ExtensionsDir, "*.config"))
	if err != nil {
		return nil, nil, err
	}
	slices.Sort(files)
	o := &Options{Env: map[string]string{}}
	var notes []string
	ignored := map[string][]string{} // namespace or section -> files
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, err
		}
		name := ExtensionsDir + "/" + filepath.Base(f)
		if err := o.parse(name, b, ignored); err != nil {
			return nil, nil, err
		}
	}
	for _, what := range slices.Sorted(maps.Keys(ignored)) {
		why := "it does not apply to one host"
		if w, ok := otherSections[what]; ok {
			why = "Sprout does not change " + w + " from a bundle; use .platform/hooks for host changes"
		}
		notes = append(notes, fmt.Sprintf("%s: %s ignored: %s", strings.Join(slices.Compact(ignored[what]), ", "), what, why))
	}
	if len(o.Env) == 0 {
		o.Env = nil
	}
	if err := ValidateEnv(o.Env); err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrInvalidBundle, ExtensionsDir, err)
	}
	return o, notes, nil
}

// extError is an error at a line of a .config file.
func extError(file string, n *yaml.Node, format string, args ...any) error {
	if n != nil && n.Line > 0 {
		file = fmt.Sprintf("%s line %d", file, n.Line)
	}
	return invalid(file, format, args...)
}

func (o *Options) parse(file string, b []byte, ignored map[string][]string) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		return invalid(file, "%s (a .config file is YAML or JSON; check its indentation, and use spaces, not tabs)", msg)
	}
	if len(doc.Content) == 0 {
		return nil // empty, or comments only
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		return extError(file, top, "the file must be a mapping of sections such as option_settings:")
	}
	for i := 0; i < len(top.Content); i += 2 {
		k, v := top.Content[i], top.Content[i+1]
		switch {
		case k.Value == "option_settings":
			if err := o.settings(file, v, ignored); err != nil {
				return err
			}
		case otherSections[k.Value] != "":
			ignored[k.Value] = append(ignored[k.Value], file)
		default:
			return extError(file, k, "unknown section %q; a .config file has option_settings (and packages, files, commands, container_commands, Resources and such, which Sprout ignores)", k.Value)
		}
	}
	return nil
}

// settings reads option_settings in either form:
//
//	option_settings:              option_settings:
//	  namespace:                    - namespace: namespace
//	    option: value                 option_name: option
//	                                  value: value
func (o *Options) settings(file string, n *yaml.Node, ignored map[string][]string) error {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i < len(n.Content); i += 2 {
			ns, opts := n.Content[i], n.Content[i+1]
			if opts.Kind != yaml.MappingNode {
				return extError(file, opts, "option_settings: %s must hold option: value pairs", ns.Value)
			}
			for j := 0; j < len(opts.Content); j += 2 {
				if err := o.set(file, ns.Value, opts.Content[j], opts.Content[j+1], ignored); err != nil {
					return err
				}
			}
		}
	case yaml.SequenceNode:
		for _, item := range n.Content {
			if item.Kind != yaml.MappingNode {
				return extError(file, item, "each option_settings entry needs namespace, option_name and value")
			}
			ns := NSEnvironment // Elastic Beanstalk's default namespace
			var name, value *yaml.Node
			for j := 0; j < len(item.Content); j += 2 {
				k, v := item.Content[j], item.Content[j+1]
				switch k.Value {
				case "namespace":
					ns = v.Value
				case "option_name":
					name = v
				case "value":
					value = v
				case "resource_name":
				default:
					return extError(file, k, "unknown key %q in an option_settings entry; use namespace, option_name and value", k.Value)
				}
			}
			if name == nil {
				return extError(file, item, "option_settings entry without option_name")
			}
			if value == nil {
				value = &yaml.Node{Kind: yaml.ScalarNode, Line: name.Line}
			}
			if err := o.set(file, ns, name, value, ignored); err != nil {
				return err
			}
		}
	case yaml.ScalarNode:
		if n.Value != "" {
			return extError(file, n, "option_settings must be a mapping of namespaces or a list of entries")
		}
	default:
		return extError(file, n, "option_settings must be a mapping of namespaces or a list of entries")
	}
	return nil
}

// set applies one option.
func (o *Options) set(file, ns string, name, value *yaml.Node, ignored map[string][]string) error {
	if value.Kind != yaml.ScalarNode {
		return extError(file, value, "%s: %s must be a single value, not a list or mapping", ns, name.Value)
	}
	opt, v := name.Value, value.Value
	bad := func(format string, args ...any) error {
		return extError(file, value, "%s: %s: %s", ns, opt, fmt.Sprintf(format, args...))
	}
	switch ns {
	case NSEnvironment:
		if err := ValidateEnvKey(opt); err != nil {
			return extError(file, name, "%s: %v", ns, err)
		}
		o.Env[opt] = v
	case NSApplication:
		if opt != "Application Healthcheck URL" {
			return extError(file, name, "%s has no option %q; it has Application Healthcheck URL", ns, opt)
		}
		p, err := healthURLPath(v)
		if err != nil {
			return bad("%v", err)
		}
		o.HealthPath = p
	case NSCommand:
		if err := o.Deploy.set(opt, v); err != nil {
			if errors.Is(err, errUnknownOption) {
				return extError(file, name, "%s has no option %q; it has %s", ns, opt, strings.Join(commandOptions, ", "))
			}
			return bad("%v", err)
		}
	case NSTrafficSplitting:
		n, err := strconv.Atoi(v)
		switch opt {
		case "NewVersionPercent":
			if err != nil || n < 1 || n > 100 {
				return bad("%q is not a whole number from 1 to 100", v)
			}
			o.Deploy.NewVersionPercent = n
		case "EvaluationTime":
			if err != nil || n < 3 || n > 600 {
				return bad("%q is not a number of minutes from 3 to 600", v)
			}
			o.Deploy.EvaluationTime = time.Duration(n) * time.Minute
		default:
			return extError(file, name, "%s has no option %q; it has NewVersionPercent, EvaluationTime", ns, opt)
		}
	case NSProxy:
		if opt != "ProxyServer" {
			ignored[ns+" "+opt] = append(ignored[ns+" "+opt], file)
			return nil
		}
		if !slices.Contains(proxyServers, v) {
			return bad("%q is not one of %s", v, strings.Join(proxyServers, ", "))
		}
		o.ProxyNone = v == "none"
	default:
		ignored[ns] = append(ignored[ns], file)
	}
	return nil
}

var errUnknownOption = errors.New("unknown option")

func (p *Policy) set(opt, v string) error {
	switch opt {
	case "DeploymentPolicy":
		if !slices.Contains(deploymentPolicies, v) {
			return fmt.Errorf("%q is not one of %s", v, strings.Join(deploymentPolicies, ", "))
		}
		p.DeploymentPolicy = v
	case "BatchSizeType":
		if !slices.Contains(batchSizeTypes, v) {
			return fmt.Errorf("%q is not one of %s", v, strings.Join(batchSizeTypes, ", "))
		}
		p.BatchSizeType = v
	case "BatchSize":
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			return fmt.Errorf("%q is not a whole number from 1 to 10000", v)
		}
		p.BatchSize = n
	case "Timeout":
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 3600 {
			return fmt.Errorf("%q is not a number of seconds from 1 to 3600", v)
		}
		p.Timeout = time.Duration(n) * time.Second
	case "IgnoreHealthCheck":
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
		p.IgnoreHealthCheck = b
	default:
		return errUnknownOption
	}
	return nil
}

// healthURLPath reads an Application Healthcheck URL: /path, or
// HTTP:port/path and HTTPS:port/path, whose port and scheme are the
// container's own on one host.
func healthURLPath(v string) (string, error) {
	s := strings.TrimSpace(v)
	if i := strings.Index(s, ":"); i > 0 && !strings.HasPrefix(s, "/") {
		scheme := strings.ToUpper(s[:i])
		if scheme != "HTTP" && scheme != "HTTPS" {
			return "", fmt.Errorf("%q: use /path or HTTP:port/path (a TCP check is the default when no URL is set)", v)
		}
		rest := s[i+1:]
		slash := strings.Index(rest, "/")
		if slash < 0 {
			s = "/"
		} else {
			s = rest[slash:]
		}
	}
	if !strings.HasPrefix(s, "/") {
		return "", fmt.Errorf("%q must start with / (for example /health)", v)
	}
	return s, nil
}

// String summarises the policy for the deploy output.
func (p Policy) String() string {
	var parts []string
	if p.DeploymentPolicy != "" {
		parts = append(parts, "DeploymentPolicy "+p.DeploymentPolicy)
	}
	if p.BatchSize > 0 {
		parts = append(parts, fmt.Sprintf("BatchSize %d (%s)", p.BatchSize, cmp.Or(p.BatchSizeType, "Percentage")))
	}
	if p.Timeout > 0 {
		parts = append(parts, "Timeout "+p.Timeout.String())
	}
	if p.IgnoreHealthCheck {
		parts = append(parts, "IgnoreHealthCheck")
	}
	if p.NewVersionPercent > 0 {
		parts = append(parts, fmt.Sprintf("NewVersionPercent %d", p.NewVersionPercent))
	}
	if p.EvaluationTime > 0 {
		parts = append(parts, "EvaluationTime "+p.EvaluationTime.String())
	}
	return strings.Join(parts, ", ")
}
