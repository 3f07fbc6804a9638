// Package boundaries has no code: its tests check the import and environment boundaries of
// the whole module.
package boundaries
