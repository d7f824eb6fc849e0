// gpulab-loadconfig: load NVIDIA device plugin config files with the plugin's own loader, strictly.
//
// Part of gpulab.mps (tests/gpu/device_plugin/build.sh compiles it inside a k8s-device-plugin source tree, so
// that "spec" below is that tree's api/config/v1: upstream's or the fork's). For each file it prints one JSON line:
//
//	{"file", "accepted", "error", "unknown_fields", "warnings", "sharing_strategy", "effective"}
//
//   - accepted/error: what spec.NewConfig (the loader both binaries call, with the flag --config-file) said;
//   - unknown_fields: keys of the file that no field of the Go types reads (the loader itself ignores them: a
//     misspelt key silently means its default). Found by walking the file against the Go types' json tags;
//   - effective: the config after spec.DisableResourceNamingInConfig, which nvidia-device-plugin and
//     mps-control-daemon apply right after loading (it drops rename/devices), with the log lines it wrote
//     in warnings;
//   - sharing_strategy: what the plugin will do (mps, time-slicing, none).
//
// A file is fit for the plugin only when accepted and unknown_fields is empty.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"

	cli "github.com/urfave/cli/v2"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	spec "github.com/NVIDIA/k8s-device-plugin/api/config/v1"
)

type result struct {
	File            string      `json:"file"`
	Accepted        bool        `json:"accepted"`
	Error           string      `json:"error"`
	UnknownFields   []string    `json:"unknown_fields"`
	Warnings        []string    `json:"warnings"`
	SharingStrategy string      `json:"sharing_strategy"`
	Effective       interface{} `json:"effective"`
}

var unmarshaler = reflect.TypeOf((*json.Unmarshaler)(nil)).Elem()

// hasJSONTags: whether a struct type names its fields with json tags (ReplicatedDevices, a union read by its own
// UnmarshalJSON from a string, a number or a list, has none: it is a leaf for the walk).
func hasJSONTags(t reflect.Type) bool {
	for i := 0; i < t.NumField(); i++ {
		if t.Field(i).Tag.Get("json") != "" {
			return true
		}
	}
	return false
}

// jsonFields collects the keys a struct type reads, with the fields of embedded structs (encoding/json inlines them).
func jsonFields(t reflect.Type, fields map[string]reflect.Type) {
	for i := 0; i < t.NumField(); i++ {
		field := t.Field(i)
		name := strings.Split(field.Tag.Get("json"), ",")[0]
		if name == "-" {
			continue
		}
		if name == "" && field.Anonymous {
			embedded := field.Type
			for embedded.Kind() == reflect.Ptr {
				embedded = embedded.Elem()
			}
			if embedded.Kind() == reflect.Struct {
				jsonFields(embedded, fields)
				continue
			}
		}
		if name == "" {
			name = field.Name // encoding/json matches the Go name, case-insensitively; the loader does too
		}
		fields[name] = field.Type
	}
}

// walk reports every key of value (decoded JSON) that the Go type t does not read.
func walk(path string, value interface{}, t reflect.Type, unknown *[]string) {
	for t.Kind() == reflect.Ptr {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		object, ok := value.(map[string]interface{})
		if !ok {
			return // a scalar where a struct is expected: the loader reports it
		}
		if reflect.PtrTo(t).Implements(unmarshaler) && !hasJSONTags(t) {
			return
		}
		fields := map[string]reflect.Type{}
		jsonFields(t, fields)
		for key, item := range object {
			field, ok := fields[key]
			if !ok {
				*unknown = append(*unknown, path+key)
				continue
			}
			walk(path+key+".", item, field, unknown)
		}
	case reflect.Slice, reflect.Array:
		if items, ok := value.([]interface{}); ok {
			for i, item := range items {
				walk(fmt.Sprintf("%s%d.", path, i), item, t.Elem(), unknown)
			}
		}
	case reflect.Map:
		if object, ok := value.(map[string]interface{}); ok {
			for key, item := range object {
				walk(path+key+".", item, t.Elem(), unknown)
			}
		}
	}
}

func load(file string) (r result) {
	r = result{File: file, UnknownFields: []string{}, Warnings: []string{}}
	var logs bytes.Buffer
	klog.SetOutput(&logs)
	defer func() {
		klog.Flush()
		seen := map[string]bool{}
		for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			// Keep warnings and errors (klog's header starts with W or E), without the header (time, pid, source
			// line). klog writes a warning to the output of each severity at or below it: keep each message once.
			i := strings.Index(line, "] ")
			if i < 0 || (line[0] != 'W' && line[0] != 'E') {
				continue
			}
			line = line[i+2:]
			if !seen[line] {
				seen[line] = true
				r.Warnings = append(r.Warnings, line)
			}
		}
	}()

	flags := []cli.Flag{&cli.StringFlag{Name: "config-file"}}
	var config *spec.Config
	app := &cli.App{Name: "gpulab-loadconfig", Flags: flags, Action: func(c *cli.Context) error {
		var err error
		config, err = spec.NewConfig(c, flags)
		return err
	}}
	text, err := os.ReadFile(file)
	if err == nil {
		var value interface{}
		if err = yaml.Unmarshal(text, &value); err == nil {
			walk("", value, reflect.TypeOf(spec.Config{}), &r.UnknownFields)
			sort.Strings(r.UnknownFields)
		}
	}
	if err := app.Run([]string{"gpulab-loadconfig", "--config-file", file}); err != nil {
		r.Error = err.Error()
		return r
	}
	r.Accepted = true

	spec.DisableResourceNamingInConfig(config)
	r.SharingStrategy = string(config.Sharing.SharingStrategy())
	config.Flags.GFD = nil
	config.Flags.Plugin = nil
	r.Effective = config
	return r
}

func main() {
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	_ = klogFlags.Set("logtostderr", "false")
	_ = klogFlags.Set("alsologtostderr", "false")
	_ = klogFlags.Set("stderrthreshold", "FATAL")
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gpulab-loadconfig CONFIG_FILE...")
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	for _, file := range os.Args[1:] {
		if err := out.Encode(load(file)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}
