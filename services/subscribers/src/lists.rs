//! Lists: create, get, page, delete.

use broadside_auth::Caller;
use broadside_proto::v1::*;
use broadside_proto::{ServiceError, names};
use broadside_store::{OptIn as StoreOptIn, PageRequest, new_id, now_millis};

use crate::Lists;
use crate::validate::check_display_name;
use crate::{list_to_proto, non_empty, tenant};

impl Lists<'_> {
    pub async fn create_list(&self, caller: &Caller, request: CreateListRequest) -> Result<MailingList, ServiceError> {
        let list = request.list.unwrap_or_default();
        let display_name = list.display_name.trim();
        if display_name.is_empty() {
            return Err(ServiceError::invalid("list.display_name", "is required"));
        }
        check_display_name("list.display_name", display_name)?;
        let opt_in = match OptIn::try_from(list.opt_in) {
            Ok(OptIn::Double) => StoreOptIn::Double,
            Ok(OptIn::Single | OptIn::Unspecified) => StoreOptIn::Single,
            Err(_) => return Err(ServiceError::invalid("list.opt_in", format!("unknown value {}", list.opt_in))),
        };
        let stored = self
            .store
            .create_list(
                broadside_store::MailingList {
                    tenant: caller.tenant.clone(),
                    id: new_id(),
                    display_name: display_name.to_owned(),
                    description: list.description,
                    opt_in,
                    create_time: now_millis(),
                },
                non_empty(request.request_id),
            )
            .await?;
        tracing::info!(tenant = %caller.tenant, list = %stored.id, ?opt_in, "list created");
        Ok(list_to_proto(&stored))
    }

    pub async fn get_list(&self, caller: &Caller, request: GetListRequest) -> Result<MailingList, ServiceError> {
        let id = names::parse("name", &request.name, "lists")?;
        let list = self.store.get_list(tenant(caller), id).await?.ok_or(ServiceError::NotFound(request.name))?;
        Ok(list_to_proto(&list))
    }

    pub async fn list_lists(
        &self,
        caller: &Caller,
        request: ListListsRequest,
    ) -> Result<ListListsResponse, ServiceError> {
        let page = PageRequest::new(request.page_size.into(), &request.page_token);
        let page = self.store.list_lists(tenant(caller), page).await?;
        Ok(ListListsResponse {
            lists: page.items.iter().map(list_to_proto).collect(),
            next_page_token: page.next_token.unwrap_or_default(),
        })
    }

    pub async fn delete_list(&self, caller: &Caller, request: DeleteListRequest) -> Result<(), ServiceError> {
        let id = names::parse("name", &request.name, "lists")?;
        if !self.store.delete_list(tenant(caller), id).await? {
            return Err(ServiceError::NotFound(request.name));
        }
        broadside_auth::audit(&self.store, caller, "list.delete", &request.name, serde_json::json!({})).await?;
        Ok(())
    }
}
