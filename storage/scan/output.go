package scan

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes one line per resource and storage, then the totals. STATUS is "current"
// for objects on their resource's write key, "STALE" for the others, and "-" without a config.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tSTORAGE\tPROVIDER\tKEY\tOBJECTS\tSTATUS")
	for _, res := range r.Resources {
		name := res.Resource
		if !res.Known {
			name += " (" + res.Prefix + ")"
		}
		for _, s := range res.Storage {
			status := "-"
			if s.Current != nil {
				status = "current"
				if !*s.Current {
					status = "STALE"
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", name, s.Class, dash(s.Provider), dash(s.Key), s.Objects, status)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	for _, k := range r.KMS {
		fmt.Fprintf(w, "kms provider %s (%s): current key id %s, healthz %s\n", k.Provider, k.Endpoint, k.KeyID, k.Healthz)
	}
	stale := "not checked (no --encryption-config)"
	if r.Checked {
		stale = fmt.Sprint(r.Stale)
	}
	_, err := fmt.Fprintf(w, "%d objects under %s at revision %d: %d plaintext, %s not on the write key\n",
		r.Objects, r.Root, r.Revision, r.Plaintext, stale)
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
