package scan

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
)

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes one line per resource and storage, then the totals. With a config, STATUS
// is "current" for objects on their resource's write key and "STALE" for the others. Without
// one, scan cannot know the write keys: the table has no STATUS column, and one line says so.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	sealed := map[string]int{} // recovery key id -> objects
	for _, res := range r.Resources {
		for _, s := range res.Storage {
			if s.Recovery != "" {
				sealed[s.Recovery] += s.Objects
			}
		}
	}
	header := "RESOURCE\tSTORAGE\tPROVIDER\tKEY\tOBJECTS"
	if len(sealed) > 0 {
		header = "RESOURCE\tSTORAGE\tPROVIDER\tKEY\tRECOVERY KEY\tOBJECTS"
	}
	if r.Checked {
		header += "\tSTATUS"
	}
	fmt.Fprintln(tw, header)
	for _, res := range r.Resources {
		name := res.Resource
		if !res.Known {
			name += " (" + res.Prefix + ")"
		}
		for _, s := range res.Storage {
			class := s.Class
			if s.Format != "" {
				class += " (" + s.Format + ")"
			}
			line := fmt.Sprintf("%s\t%s\t%s\t%s", name, class, dash(s.Provider), dash(s.Key))
			if len(sealed) > 0 {
				line += "\t" + dash(s.Recovery)
			}
			line += fmt.Sprintf("\t%d", s.Objects)
			if r.Checked {
				status := "-"
				if s.Current != nil {
					status = "current"
					if !*s.Current {
						status = "STALE"
					}
				}
				line += "\t" + status
			}
			fmt.Fprintln(tw, line)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	for _, k := range r.KMS {
		fmt.Fprintf(w, "kms provider %s (%s): current key id %s, healthz %s\n", k.Provider, k.Endpoint, k.KeyID, k.Healthz)
	}
	if n := len(r.VaultKubernetesKMS); n > 0 {
		keys := make([]string, 0, n)
		total := 0
		for k, c := range r.VaultKubernetesKMS {
			keys = append(keys, fmt.Sprintf("%s: %d", k, c))
			total += c
		}
		sort.Strings(keys)
		fmt.Fprintf(w, "%d objects in vault-kubernetes-kms's format, by transit key version: %s (the Vault plugin reads them only with --vault-read-vault-kubernetes-kms; 'kmsctl rewrite' moves them to ours)\n",
			total, strings.Join(keys, ", "))
	}
	ids := make([]string, 0, len(sealed))
	for id := range sealed {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		fmt.Fprintf(w, "recovery key %s: %d objects carry its seal\n", id, sealed[id])
	}
	if c := r.Recovery; c != nil {
		fmt.Fprintf(w, "recovery key %s given: %d of %d kms v2 objects open with it alone, %d do not open, %d carry no seal of it\n",
			c.Key, c.Opened, c.KMSv2, c.Failed, c.Unsealed)
		if len(c.Examples) > 0 {
			fmt.Fprintf(w, "  not readable with it, e.g.: %s\n", strings.Join(c.Examples, " "))
		}
	}
	if !r.Checked {
		_, err := fmt.Fprintf(w, "%d objects under %s at revision %d: %d plaintext\n"+
			"write keys not checked: without --encryption-config scan cannot know which provider and key new writes use, so it flags nothing as stale\n",
			r.Objects, r.Root, r.Revision, r.Plaintext)
		return err
	}
	_, err := fmt.Fprintf(w, "%d objects under %s at revision %d: %d plaintext, %d not on the write key\n",
		r.Objects, r.Root, r.Revision, r.Plaintext, r.Stale)
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
